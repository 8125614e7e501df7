import { defineConfig } from 'vitest/config';

// One runner for the whole repository: unit tests sit next to the code and use the in-memory adapters;
// integration and end-to-end tests live in test/ and start real nats-server and redis-server processes.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts', 'services/*/src/**/*.test.ts'],
          testTimeout: 20_000,
          // Unit tests first: they are fast and point at the broken piece before any server starts.
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/**/*.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          // Each file starts its own servers and several Node.js processes (the benchmark smoke runs
          // thousands of connections): one file at a time is what a 2-core CI machine carries without
          // timeouts.
          maxWorkers: 1,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
