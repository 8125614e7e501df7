import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { type AudienceExpr, MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_TAGS, normalize } from './expression.js';
import { MAX_INFIX_CHARS, parseInfix, toInfix } from './infix.js';
import { all, and, nodesOf, not, or, randomExpression, seededRandom, t } from './test-expressions.js';

function parseError(text: string, field?: string): PushdError {
  try {
    parseInfix(text, field);
  } catch (error) {
    expect(error).toBeInstanceOf(PushdError);
    return error as PushdError;
  }
  throw new Error(`expected ${JSON.stringify(text)} to be refused`);
}

describe('toInfix', () => {
  it.each<[AudienceExpr, string]>([
    [
      or(and(t('vip'), t('pushd:platform:ios')), not(t('churned'))),
      '("vip" AND pushd:platform:ios) OR NOT "churned"',
    ],
    [all, 'ALL'],
    [not(all), 'NOT ALL'],
    [not(not(t('a'))), 'NOT NOT "a"'],
    [not(or(t('a'), t('b'))), 'NOT ("a" OR "b")'],
    [and(t('a'), and(t('b'), t('c'))), '"a" AND ("b" AND "c")'],
    [or(t('a'), t('b'), t('c')), '"a" OR "b" OR "c"'],
    [t('AND'), '"AND"'],
    [t('say"hi"'), '"say\\"hi\\""'],
    [t('back\\slash'), '"back\\\\slash"'],
    [t('pushd:city:深圳'), 'pushd:city:深圳'],
    [t('pushd:city:a(b)'), '"pushd:city:a(b)"'],
  ])('%j is %s', (expr, text) => {
    expect(toInfix(expr)).toBe(text);
  });
});

describe('parseInfix', () => {
  it('reads the documented example', () => {
    expect(parseInfix('("vip" AND pushd:platform:ios) OR NOT "churned"')).toEqual(
      or(and(t('vip'), t('pushd:platform:ios')), not(t('churned'))),
    );
  });

  it.each<[string, AudienceExpr]>([
    ['"a" OR "b" AND NOT "c"', or(t('a'), and(t('b'), not(t('c'))))],
    ['NOT "a" AND "b"', and(not(t('a')), t('b'))],
    ['NOT ("a" AND "b")', not(and(t('a'), t('b')))],
    ['"a" and not "b" or all', or(and(t('a'), not(t('b'))), all)],
    ['"a"AND"b"', and(t('a'), t('b'))],
    ['  ((("a")))  ', t('a')],
    ['"a" AND "b" AND "c"', and(t('a'), t('b'), t('c'))],
    ['("a" AND "b") AND "c"', and(and(t('a'), t('b')), t('c'))],
    ['"AND" OR "not"', or(t('AND'), t('not'))],
    ['"say\\"hi\\""', t('say"hi"')],
    ['"pushd:platform:android"', t('pushd:platform:android')],
    ['pushd:province:广东 AND pushd:active:30d', and(t('pushd:province:广东'), t('pushd:active:30d'))],
  ])('reads %s', (text, expected) => {
    expect(parseInfix(text)).toEqual(expected);
  });

  it('gives back exactly what toInfix wrote, for random expressions', () => {
    const random = seededRandom(7);
    for (let tested = 0; tested < 1000; ) {
      const expr = randomExpression(random, 6);
      if (nodesOf(expr) > 256) continue;
      tested++;
      expect(parseInfix(toInfix(expr))).toEqual(expr);
      const normal = normalize(expr);
      expect(parseInfix(toInfix(normal))).toEqual(normal);
    }
  });

  it.each([
    ['vip AND "x"', 1, 'user tags are quoted ("vip")'],
    ['"a" AND', 8, 'expected a tag, ALL, NOT or "(" but found the end'],
    ['', 1, 'found the end'],
    ['("a" OR "b"', 12, 'expected ")" but found the end'],
    ['"a" "b"', 5, 'unexpected tag "b"'],
    ['"a")', 4, 'unexpected ")"'],
    ['"a" OR OR "b"', 8, 'but found OR'],
    ['"a" AND "unterminated', 9, 'unterminated quoted tag'],
    ['"a" AND "has space"', 9, 'without whitespace'],
    ['"a" OR pushd:gender:f', 8, 'not a built-in tag'],
    ['pushd:platform:windows', 1, 'takes one of android, ios'],
  ])('refuses %j at position %i', (text, position, problem) => {
    const error = parseError(text, 'tags');
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.metadata).toEqual({ field: 'tags', position: String(position) });
    expect(error.message).toContain(problem);
    expect(error.message).toMatch(/^tags: /);
  });

  it('applies the expression limits', () => {
    const tags = Array.from({ length: MAX_EXPRESSION_TAGS + 1 }, (_, i) => `"t${i}"`).join(' OR ');
    expect(parseError(tags).metadata.limit).toBe(String(MAX_EXPRESSION_TAGS));
    const deep = `${'NOT '.repeat(MAX_EXPRESSION_DEPTH + 1)}"a"`;
    expect(parseError(deep).metadata.limit).toBe(String(MAX_EXPRESSION_DEPTH));
    expect(parseError('"a" OR '.repeat(MAX_INFIX_CHARS)).metadata.limit).toBe(String(MAX_INFIX_CHARS));
  });

  it('refuses deeply nested parentheses without exhausting the stack', () => {
    expect(parseError(`${'('.repeat(5000)}"a"${')'.repeat(5000)}`).message).toContain('nest at most');
  });
});
