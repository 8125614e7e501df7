/**
 * The infix form of an expression, for logs and the CLI:
 *
 *     ("vip" AND pushd:platform:ios) OR NOT "churned"
 *
 * - user tags are double-quoted (`\"` and `\\` escape a quote and a backslash); built-in `pushd:` tags are
 *   bare (quoted too when their value holds a parenthesis, quote or backslash). Quoting user tags is what
 *   keeps a tag named `AND` or `ALL` from being read as an operator;
 * - `ALL` is every registered device; `NOT`, `AND`, `OR` (any letter case when parsing) bind in that order,
 *   tightest first; parentheses group.
 *
 * `toInfix` parenthesizes every and/or inside another operator, so `parseInfix(toInfix(e))` gives back
 * `e` exactly (not just an equivalent expression).
 */
import { PushdError } from '@pushd/common';
import {
  type AudienceExpr,
  MAX_EXPRESSION_DEPTH,
  RESERVED_TAG_PREFIX,
  validateExpression,
  validateExpressionTag,
} from './expression.js';

/** Longest infix text `parseInfix` reads: the longest tags at the node limit fit with room to spare. */
export const MAX_INFIX_CHARS = 16_384;

/** Parentheses and NOTs may nest this deep while parsing (redundant parentheses count too). */
const MAX_PARSE_NESTING = 4 * MAX_EXPRESSION_DEPTH;

const BARE_TAG = /^pushd:[^\s()"\\]+$/u;

/** The expression in infix form (see the top of this file). */
export function toInfix(expr: AudienceExpr): string {
  switch (expr.kind) {
    case 'all':
      return 'ALL';
    case 'tag':
      return BARE_TAG.test(expr.tag) ? expr.tag : `"${expr.tag.replace(/["\\]/g, '\\$&')}"`;
    case 'not':
      return `NOT ${operand(expr.term)}`;
    case 'and':
      return expr.terms.map(operand).join(' AND ');
    case 'or':
      return expr.terms.map(operand).join(' OR ');
  }
}

function operand(expr: AudienceExpr): string {
  return expr.kind === 'and' || expr.kind === 'or' ? `(${toInfix(expr)})` : toInfix(expr);
}

type Token =
  | { type: '(' | ')' | 'AND' | 'OR' | 'NOT' | 'ALL' | 'end'; at: number }
  | { type: 'tag'; tag: string; at: number };

const KEYWORDS = new Set(['AND', 'OR', 'NOT', 'ALL']);

/**
 * Parses the infix form into an expression, exactly as written (not normalized), and validates it.
 * Errors are PushdError INVALID_ARGUMENT on `field` with the 1-based `position` of the problem.
 */
export function parseInfix(text: string, field = 'expression'): AudienceExpr {
  if (text.length > MAX_INFIX_CHARS) {
    throw new PushdError('INVALID_ARGUMENT', `${field}: at most ${MAX_INFIX_CHARS} characters`, {
      metadata: { field, limit: String(MAX_INFIX_CHARS) },
    });
  }
  const expr = new Parser(text, field).parse();
  validateExpression(expr, field);
  return expr;
}

class Parser {
  private readonly tokens: Token[];
  private index = 0;
  private nesting = 0;

  constructor(
    private readonly text: string,
    private readonly field: string,
  ) {
    this.tokens = this.tokenize();
  }

  parse(): AudienceExpr {
    const expr = this.parseOr();
    const token = this.peek();
    if (token.type !== 'end') throw this.error(token.at, `unexpected ${describe(token)}`);
    return expr;
  }

  private parseOr(): AudienceExpr {
    const terms = [this.parseAnd()];
    while (this.peek().type === 'OR') {
      this.index++;
      terms.push(this.parseAnd());
    }
    return terms.length === 1 ? terms[0]! : { kind: 'or', terms };
  }

  private parseAnd(): AudienceExpr {
    const terms = [this.parseUnary()];
    while (this.peek().type === 'AND') {
      this.index++;
      terms.push(this.parseUnary());
    }
    return terms.length === 1 ? terms[0]! : { kind: 'and', terms };
  }

  private parseUnary(): AudienceExpr {
    const token = this.peek();
    if (token.type !== 'NOT') return this.parsePrimary();
    this.index++;
    this.enter(token.at);
    const term = this.parseUnary();
    this.nesting--;
    return { kind: 'not', term };
  }

  private parsePrimary(): AudienceExpr {
    const token = this.peek();
    this.index++;
    switch (token.type) {
      case 'tag':
        return { kind: 'tag', tag: token.tag };
      case 'ALL':
        return { kind: 'all' };
      case '(': {
        this.enter(token.at);
        const expr = this.parseOr();
        const close = this.peek();
        if (close.type !== ')') throw this.error(close.at, `expected ")" but found ${describe(close)}`);
        this.index++;
        this.nesting--;
        return expr;
      }
      default:
        throw this.error(token.at, `expected a tag, ALL, NOT or "(" but found ${describe(token)}`);
    }
  }

  private peek(): Token {
    return this.tokens[this.index] ?? this.tokens[this.tokens.length - 1]!;
  }

  private enter(at: number): void {
    this.nesting++;
    if (this.nesting > MAX_PARSE_NESTING) {
      throw this.error(at, `parentheses and NOT nest at most ${MAX_PARSE_NESTING} deep`);
    }
  }

  private tokenize(): Token[] {
    const { text } = this;
    const tokens: Token[] = [];
    let i = 0;
    while (i < text.length) {
      const c = text[i]!;
      if (/\s/u.test(c)) {
        i++;
      } else if (c === '(' || c === ')') {
        tokens.push({ type: c, at: i + 1 });
        i++;
      } else if (c === '"') {
        const start = i;
        let tag = '';
        i++;
        for (;;) {
          if (i >= text.length) throw this.error(start + 1, 'unterminated quoted tag');
          const d = text[i]!;
          if (d === '"') break;
          if (d === '\\') {
            i++;
            if (i >= text.length) throw this.error(start + 1, 'unterminated quoted tag');
          }
          tag += text[i];
          i++;
        }
        i++;
        this.checkTag(tag, start + 1);
        tokens.push({ type: 'tag', tag, at: start + 1 });
      } else {
        const start = i;
        while (i < text.length && !/[\s()"]/u.test(text[i]!)) i++;
        const word = text.slice(start, i);
        const upper = word.toUpperCase();
        if (KEYWORDS.has(upper)) {
          tokens.push({ type: upper as 'AND' | 'OR' | 'NOT' | 'ALL', at: start + 1 });
        } else if (word.startsWith(RESERVED_TAG_PREFIX)) {
          this.checkTag(word, start + 1);
          tokens.push({ type: 'tag', tag: word, at: start + 1 });
        } else {
          throw this.error(
            start + 1,
            `unquoted ${JSON.stringify(word)}: user tags are quoted ("${word}"), only built-in ${RESERVED_TAG_PREFIX} tags may be bare`,
          );
        }
      }
    }
    tokens.push({ type: 'end', at: text.length + 1 });
    return tokens;
  }

  private checkTag(tag: string, at: number): void {
    try {
      validateExpressionTag(tag, this.field);
    } catch (error) {
      if (!(error instanceof PushdError)) throw error;
      throw new PushdError('INVALID_ARGUMENT', `${error.message} (at position ${at})`, {
        metadata: { ...error.metadata, position: String(at) },
      });
    }
  }

  private error(at: number, problem: string): PushdError {
    return new PushdError('INVALID_ARGUMENT', `${this.field}: ${problem} (at position ${at})`, {
      metadata: { field: this.field, position: String(at) },
    });
  }
}

function describe(token: Token): string {
  switch (token.type) {
    case 'end':
      return 'the end';
    case 'tag':
      return `tag ${JSON.stringify(token.tag)}`;
    default:
      return token.type === '(' || token.type === ')' ? `"${token.type}"` : token.type;
  }
}
