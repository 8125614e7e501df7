import { describe, expect, it } from 'vitest';
import { compileMatcher, matches } from './evaluate.js';
import type { AudienceExpr } from './expression.js';
import { parseInfix } from './infix.js';
import { all, and, not, or, t } from './test-expressions.js';

const device = (...tags: string[]) => {
  const set = new Set(tags);
  return (tag: string) => set.has(tag);
};

// The property tests in expression.test.ts check both evaluators against each other on random
// expressions; these pin down the meaning on the cases pushes are made of.
describe.each([
  ['matches', (expr: AudienceExpr, has: (tag: string) => boolean) => matches(expr, has)],
  ['compileMatcher', (expr: AudienceExpr, has: (tag: string) => boolean) => compileMatcher(expr)(has)],
])('%s', (_name, evaluate) => {
  it('all matches every device, its negation none', () => {
    expect(evaluate(all, device())).toBe(true);
    expect(evaluate(not(all), device('a'))).toBe(false);
  });

  it('evaluates the documented example', () => {
    const expr = parseInfix('("vip" AND pushd:platform:ios) OR NOT "churned"');
    expect(evaluate(expr, device('vip', 'pushd:platform:ios', 'churned'))).toBe(true);
    expect(evaluate(expr, device('vip', 'pushd:platform:android', 'churned'))).toBe(false);
    expect(evaluate(expr, device('pushd:platform:android'))).toBe(true);
    expect(evaluate(expr, device('churned'))).toBe(false);
  });

  it.each<[string, AudienceExpr, string[], boolean]>([
    ['a tag', t('a'), ['a'], true],
    ['a missing tag', t('a'), ['b'], false],
    ['not a tag', not(t('a')), ['b'], true],
    ['and of tags', and(t('a'), t('b'), t('c')), ['a', 'b'], false],
    ['and of tags, all present', and(t('a'), t('b'), t('c')), ['c', 'b', 'a'], true],
    ['or of tags', or(t('a'), t('b'), t('c')), ['c'], true],
    ['or of tags, none present', or(t('a'), t('b'), t('c')), [], false],
    ['two-term and', and(t('a'), not(t('b'))), ['a'], true],
    ['two-term or', or(not(t('a')), t('b')), ['a'], false],
    ['mixed and', and(t('a'), or(t('b'), t('c')), not(t('d'))), ['a', 'c'], true],
    ['mixed or', or(and(t('a'), t('b')), not(t('c')), t('d')), ['c'], false],
  ])('%s', (_case, expr, tags, expected) => {
    expect(evaluate(expr, device(...tags))).toBe(expected);
  });

  it('stops asking once the answer is known', () => {
    const asked: string[] = [];
    const has = (tag: string) => {
      asked.push(tag);
      return tag === 'a';
    };
    expect(evaluate(or(t('a'), t('b'), t('c')), has)).toBe(true);
    expect(evaluate(and(t('b'), t('a'), t('c')), has)).toBe(false);
    expect(asked).toEqual(['a', 'b']);
  });
});
