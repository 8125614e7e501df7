#!/usr/bin/env node
// Workspace bin: runs the TypeScript source through tsx (workspace packages ship source, not builds).
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
