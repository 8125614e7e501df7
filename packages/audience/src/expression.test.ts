import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { compileMatcher, matches } from './evaluate.js';
import {
  type AudienceExpr,
  builtinTag,
  MAX_EXPRESSION_DEPTH,
  MAX_EXPRESSION_NODES,
  MAX_EXPRESSION_TAGS,
  normalize,
  REGISTRATION_VALUE_MAX_CHARS,
  tagsOf,
  validateExpression,
} from './expression.js';
import {
  all,
  allTagSets,
  and,
  depthOf,
  nodesOf,
  not,
  or,
  randomExpression,
  seededRandom,
  t,
} from './test-expressions.js';

/** The PushdError `run` throws (fails the test if it throws nothing or something else). */
function thrown(run: () => unknown): PushdError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(PushdError);
    return error as PushdError;
  }
  throw new Error('expected a PushdError');
}

/** `depth` operators deep: not(not(...(tag))). */
function nested(depth: number): AudienceExpr {
  let expr = t('a');
  for (let i = 0; i < depth; i++) expr = not(expr);
  return expr;
}

describe('validateExpression', () => {
  it('accepts every kind, user and built-in tags', () => {
    const expr = or(
      and(t('vip'), t('pushd:platform:ios'), t('pushd:app_version:2.1.0')),
      not(t('churned')),
      and(t('pushd:province:广东'), t('pushd:city:深圳'), t('pushd:locale:zh-CN')),
      and(t('pushd:os_version:14'), t('pushd:active:7d')),
      all,
    );
    expect(() => validateExpression(expr)).not.toThrow();
  });

  it.each([
    [null, 'expression', 'must be an expression object'],
    [{}, 'expression.kind', 'must be one of'],
    [{ kind: 'xor' }, 'expression.kind', 'must be one of'],
    [{ kind: 'tag' }, 'expression.tag', 'must be a string'],
    [{ kind: 'and', terms: [t('a')] }, 'expression.terms', 'at least 2 terms'],
    [{ kind: 'or', terms: 'ab' }, 'expression.terms', 'at least 2 terms'],
    [{ kind: 'not' }, 'expression.term', 'must be an expression object'],
    [
      or(t('a'), and(t('b'), not(t('has space')))),
      'expression.terms[1].terms[1].term.tag',
      'without whitespace',
    ],
    [or(t('a'), not({ kind: 'tag', tag: 7 } as never)), 'expression.terms[1].term.tag', 'must be a string'],
    [and(t('a'), t('')), 'expression.terms[1].tag', '1 to 50 characters'],
    [and(t('a'), t('x'.repeat(51))), 'expression.terms[1].tag', '1 to 50 characters'],
    [and(t('a'), t('tab\there')), 'expression.terms[1].tag', 'without whitespace'],
    [and(t('a'), t('bell\u0007')), 'expression.terms[1].tag', 'control characters'],
    [t('pushd:gender:f'), 'expression.tag', 'not a built-in tag'],
    [t('pushd:platform'), 'expression.tag', 'not a built-in tag'],
    [t('pushd:platform:windows'), 'expression.tag', 'takes one of android, ios'],
    [t('pushd:active:2d'), 'expression.tag', 'takes one of 1d, 7d, 30d'],
    [t('pushd:app_version:'), 'expression.tag', 'the value must be 1 to 64'],
    [t(`pushd:os_version:${'9'.repeat(65)}`), 'expression.tag', 'the value must be 1 to 64'],
    [t('pushd:locale:zh\u0007CN'), 'expression.tag', 'control characters'],
    [t('pushd:city:New York'), 'expression.tag', 'without whitespace'],
  ])('refuses %j at %s', (expr, field, problem) => {
    const error = thrown(() => validateExpression(expr));
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.metadata.field).toBe(field);
    expect(error.message).toContain(problem);
  });

  it('names paths from the given root field', () => {
    const error = thrown(() => validateExpression(and(t('a'), not(t('b c'))), 'audience.expression'));
    expect(error.metadata.field).toBe('audience.expression.terms[1].term.tag');
  });

  it(`allows ${MAX_EXPRESSION_TAGS} distinct tags, refuses one more at the tag that exceeds it`, () => {
    const tags = Array.from({ length: MAX_EXPRESSION_TAGS }, (_, i) => t(`tag${i}`));
    expect(() => validateExpression(or(...tags, ...tags))).not.toThrow();
    const error = thrown(() => validateExpression(or(...tags, t('tag3'), t('one-more'))));
    expect(error.metadata).toEqual({
      field: `expression.terms[${MAX_EXPRESSION_TAGS + 1}].tag`,
      limit: String(MAX_EXPRESSION_TAGS),
    });
  });

  it(`allows operators ${MAX_EXPRESSION_DEPTH} deep, not more`, () => {
    expect(() => validateExpression(nested(MAX_EXPRESSION_DEPTH))).not.toThrow();
    const error = thrown(() => validateExpression(nested(MAX_EXPRESSION_DEPTH + 1)));
    expect(error.metadata).toEqual({ field: 'expression', limit: String(MAX_EXPRESSION_DEPTH) });
  });

  it('stops at the depth limit instead of recursing into a deeper (or cyclic) input', () => {
    const cyclic: { kind: 'not'; term: unknown } = { kind: 'not', term: undefined };
    cyclic.term = cyclic;
    expect(thrown(() => validateExpression(cyclic)).metadata.limit).toBe(String(MAX_EXPRESSION_DEPTH));
  });

  it(`allows ${MAX_EXPRESSION_NODES} nodes, not more`, () => {
    const leaves = (n: number) => Array.from({ length: n }, (_, i) => t(`t${i % 10}`));
    expect(() => validateExpression(or(...leaves(MAX_EXPRESSION_NODES - 1)))).not.toThrow();
    const error = thrown(() => validateExpression(or(...leaves(MAX_EXPRESSION_NODES))));
    expect(error.metadata).toEqual({ field: 'expression', limit: String(MAX_EXPRESSION_NODES) });
  });
});

describe('normalize', () => {
  it.each<[string, AudienceExpr, AudienceExpr]>([
    [
      'flattens nested and',
      and(t('a'), and(t('b'), and(t('c'), t('d')))),
      and(t('a'), t('b'), t('c'), t('d')),
    ],
    ['flattens nested or', or(or(t('a'), t('b')), t('c')), or(t('a'), t('b'), t('c'))],
    ['keeps and inside or', or(and(t('a'), t('b')), t('c')), or(and(t('a'), t('b')), t('c'))],
    ['removes double negation', not(not(t('a'))), t('a')],
    ['keeps a third negation', not(not(not(t('a')))), not(t('a'))],
    ['dedupes terms in order', or(t('b'), t('a'), t('b')), or(t('b'), t('a'))],
    [
      'dedupes compound terms',
      and(or(t('a'), t('b')), t('c'), or(t('a'), t('b'))),
      and(or(t('a'), t('b')), t('c')),
    ],
    ['dedupes across flattening', and(t('a'), and(t('a'), t('b'))), and(t('a'), t('b'))],
    ['collapses a one-term result', or(t('a'), or(t('a'), t('a'))), t('a')],
    ['drops all from and', and(all, t('a'), all), t('a')],
    ['absorbs into all in or', or(t('a'), not(t('b')), all), all],
    ['and of only all', and(all, all), all],
    ['and with no device is no device', and(t('a'), not(all)), not(all)],
    ['or drops no device', or(t('a'), not(all), t('b')), or(t('a'), t('b'))],
    ['or of only no device', or(not(all), not(not(not(all)))), not(all)],
    [
      'normalizes under not',
      not(and(t('a'), and(t('b'), not(not(t('c')))))),
      not(and(t('a'), t('b'), t('c'))),
    ],
    [
      'flattens what double negation exposes',
      and(t('a'), not(not(and(t('b'), t('c'))))),
      and(t('a'), t('b'), t('c')),
    ],
  ])('%s', (_name, input, expected) => {
    expect(normalize(input)).toEqual(expected);
  });

  it('does not change its input', () => {
    const input = and(t('a'), and(t('a'), not(not(t('b')))));
    const copy = structuredClone(input);
    normalize(input);
    expect(input).toEqual(copy);
  });

  it('keeps the meaning on random expressions and every tag set, and is canonical', () => {
    const random = seededRandom(20240601);
    const tagSets = allTagSets();
    for (let tested = 0; tested < 1500; ) {
      const expr = randomExpression(random, 6);
      if (nodesOf(expr) > MAX_EXPRESSION_NODES) continue;
      tested++;
      validateExpression(expr);
      const normal = normalize(expr);
      validateExpression(normal);
      expect(normalize(normal)).toEqual(normal);
      expect(depthOf(normal)).toBeLessThanOrEqual(depthOf(expr));
      expect(nodesOf(normal)).toBeLessThanOrEqual(nodesOf(expr));
      expect(tagsOf(normal).every((tag) => tagsOf(expr).includes(tag))).toBe(true);
      assertCanonical(normal);
      const compiled = compileMatcher(expr);
      const compiledNormal = compileMatcher(normal);
      for (const { tags, has } of tagSets) {
        const expected = matches(expr, has);
        if (
          matches(normal, has) !== expected ||
          compiled(has) !== expected ||
          compiledNormal(has) !== expected
        ) {
          expect.fail(
            `${JSON.stringify(expr)} and ${JSON.stringify(normal)} differ on ${JSON.stringify(tags)}`,
          );
        }
      }
    }
  });
});

/**
 * No and/or directly inside the same kind, no not(not), no repeated terms, `all` only as the whole
 * expression or in a whole `not(all)`.
 */
function assertCanonical(expr: AudienceExpr, root = true): void {
  switch (expr.kind) {
    case 'all':
      expect(root).toBe(true);
      return;
    case 'tag':
      return;
    case 'not':
      expect(expr.term.kind).not.toBe('not');
      assertCanonical(expr.term, root && expr.term.kind === 'all');
      return;
    case 'and':
    case 'or': {
      expect(expr.terms.length).toBeGreaterThanOrEqual(2);
      const keys = expr.terms.map((term) => JSON.stringify(term));
      expect(new Set(keys).size).toBe(keys.length);
      for (const term of expr.terms) {
        expect(term.kind).not.toBe(expr.kind);
        expect(term.kind).not.toBe('all');
        assertCanonical(term, false);
      }
    }
  }
}

describe('tagsOf', () => {
  it('lists distinct tags in order of first appearance', () => {
    expect(tagsOf(or(and(t('b'), t('a')), not(t('b')), t('c'), all))).toEqual(['b', 'a', 'c']);
    expect(tagsOf(all)).toEqual([]);
  });
});

describe('builtinTag', () => {
  it('builds valid built-in tags', () => {
    expect(builtinTag('platform', 'ios')).toBe('pushd:platform:ios');
    expect(() => validateExpression(t(builtinTag('province', '广东')))).not.toThrow();
  });

  it('accepts every registration value the registry takes, spaces and 64 characters included', () => {
    for (const tag of [
      builtinTag('os_version', 'Android 14'),
      builtinTag('app_version', 'v'.repeat(REGISTRATION_VALUE_MAX_CHARS)),
      builtinTag('locale', 'zh Hans CN'),
    ]) {
      expect(() => validateExpression(t(tag)), tag).not.toThrow();
    }
  });
});
