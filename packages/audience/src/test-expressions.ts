// Deterministic random expressions for the property tests of this package (not exported from index.ts).
import type { AudienceExpr } from './expression.js';

/** A small fixed-seed generator (mulberry32), so that a failing case is the same on every run. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Few tags, so that random expressions repeat them (what normalization has to deal with). */
export const TEST_TAGS = ['a', 'b', 'c', 'pushd:platform:ios'] as const;

/** Every subset of TEST_TAGS as a `has` function: checking all of them decides equivalence exactly. */
export function allTagSets(): { tags: string[]; has: (tag: string) => boolean }[] {
  const sets: { tags: string[]; has: (tag: string) => boolean }[] = [];
  for (let mask = 0; mask < 1 << TEST_TAGS.length; mask++) {
    const tags = TEST_TAGS.filter((_, i) => (mask >> i) & 1);
    const set = new Set<string>(tags);
    sets.push({ tags, has: (tag) => set.has(tag) });
  }
  return sets;
}

/**
 * A random valid expression at most `maxDepth` operators deep, built to exercise normalization: nested
 * and/or of the same kind, double negations, repeated terms and `all` show up often.
 */
export function randomExpression(random: () => number, maxDepth: number): AudienceExpr {
  const roll = random();
  if (maxDepth === 0 || roll < 0.3) {
    if (random() < 0.05) return { kind: 'all' };
    return { kind: 'tag', tag: TEST_TAGS[Math.floor(random() * TEST_TAGS.length)]! };
  }
  if (roll < 0.5) return { kind: 'not', term: randomExpression(random, maxDepth - 1) };
  const kind = roll < 0.75 ? 'and' : 'or';
  const count = 2 + Math.floor(random() * 3);
  const terms = Array.from({ length: count }, () => randomExpression(random, maxDepth - 1));
  return { kind, terms };
}

/** Operator nesting depth as MAX_EXPRESSION_DEPTH counts it. */
export function depthOf(expr: AudienceExpr): number {
  switch (expr.kind) {
    case 'all':
    case 'tag':
      return 0;
    case 'not':
      return 1 + depthOf(expr.term);
    case 'and':
    case 'or':
      return 1 + Math.max(...expr.terms.map(depthOf));
  }
}

/** Node count as MAX_EXPRESSION_NODES counts it. */
export function nodesOf(expr: AudienceExpr): number {
  switch (expr.kind) {
    case 'all':
    case 'tag':
      return 1;
    case 'not':
      return 1 + nodesOf(expr.term);
    case 'and':
    case 'or':
      return 1 + expr.terms.reduce((sum, term) => sum + nodesOf(term), 0);
  }
}

/** Shorthands for building expressions in tests. */
export const t = (tag: string): AudienceExpr => ({ kind: 'tag', tag });
export const and = (...terms: AudienceExpr[]): AudienceExpr => ({ kind: 'and', terms });
export const or = (...terms: AudienceExpr[]): AudienceExpr => ({ kind: 'or', terms });
export const not = (term: AudienceExpr): AudienceExpr => ({ kind: 'not', term });
export const all: AudienceExpr = { kind: 'all' };
