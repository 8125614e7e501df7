/**
 * TPNS tag targeting (`tag_rules`, `tag_list` of `POST /v3/push/app`, and their protobuf form in
 * proto/pushd/v1/audience.proto) to the audience expression. The semantics, with the documentation they
 * come from, are at the top of expression.ts. Every error names the TPNS field that caused it, e.g.
 * `tag_rules[1].tag_items[0].tags[2]`; the caller picks the root (`audience.tag_rules`, ...).
 *
 * The converters take `unknown`: REST bodies arrive as parsed JSON, and every field is checked.
 */
import { invalidArgument } from '@pushd/common';
import type { TagExpression } from '@pushd/proto';
import {
  type AudienceExpr,
  type BuiltinTagKey,
  builtinTag,
  limitExceeded,
  MAX_EXPRESSION_NODES,
  MAX_EXPRESSION_TAGS,
  normalize,
  RESERVED_TAG_PREFIX,
  validateExpression,
  validateExpressionTag,
} from './expression.js';

/** TPNS's JSON shapes, for callers that build them (SDKs, tests); the converters accept any input. */
export type TpnsOperator = 'OR' | 'AND';
export interface TpnsTagItem {
  tags: string[];
  is_not?: boolean;
  tags_operator?: TpnsOperator | '';
  items_operator?: TpnsOperator | '';
  tag_type?: string;
}
export interface TpnsTagRule {
  tag_items: TpnsTagItem[];
  operator?: TpnsOperator | '';
  is_not?: boolean;
}
export interface TpnsTagList {
  tags: string[];
  op?: TpnsOperator | '';
}

/**
 * What each TPNS `tag_type` maps to: `user` (user tags, no `pushd:` names), `pushd` (tags in pushd form:
 * user tags or full `pushd:` names; the empty tag_type), a built-in key, or `null` (a TPNS preset pushd
 * does not keep).
 */
const TAG_TYPES: Readonly<Record<string, 'user' | 'pushd' | BuiltinTagKey | null>> = {
  '': 'pushd',
  xg_user_define: 'user',
  xg_auto_version: 'app_version',
  xg_auto_province: 'province',
  xg_auto_city: 'city',
  xg_auto_active: 'active',
  xg_auto_systemversion: 'os_version',
  xg_auto_systemlanguage: 'locale',
  xg_auto_sdkversion: null,
  xg_auto_devicebrand: null,
  xg_auto_deviceversion: null,
  xg_auto_country: null,
};

/** The expression of a TPNS `tag_rules` array, normalized and validated. */
export function fromTagRules(rules: unknown, field = 'tag_rules'): AudienceExpr {
  return finish(new Converter().rules(rules, field), field);
}

/** The expression of a TPNS `tag_list` (`{ tags, op }`; tags in pushd form), normalized and validated. */
export function fromTagList(list: unknown, field = 'tag_list'): AudienceExpr {
  const converter = new Converter();
  const record = converter.object(list, field);
  const tags = converter.array(record.tags, `${field}.tags`, 'tag');
  const terms = tags.map((tag, i) => converter.tag(tag, 'pushd', `${field}.tags[${i}]`));
  const op = tags.length > 1 ? converter.operator(record.op, `${field}.op`) : 'OR';
  return finish(junction(op, terms), field);
}

/**
 * The expression of a TPNS push body's tag fields: `tag_rules` if present, else `tag_list` (TPNS ignores
 * `tag_list` when both are given). `prefix` is prepended to field names in errors (`audience.`).
 */
export function fromTpnsTagFields(
  body: { tag_rules?: unknown; tag_list?: unknown },
  prefix = '',
): AudienceExpr {
  if (body.tag_rules !== undefined && body.tag_rules !== null) {
    return fromTagRules(body.tag_rules, `${prefix}tag_rules`);
  }
  if (body.tag_list !== undefined && body.tag_list !== null) {
    return fromTagList(body.tag_list, `${prefix}tag_list`);
  }
  throw invalidArgument(`${prefix}tag_rules`, 'a tag push needs tag_rules or tag_list');
}

/** The expression of a protobuf TagExpression; errors name proto fields (`tag_expression.tag_rules.rules[0]...`). */
export function fromProto(expr: TagExpression, field = 'tag_expression'): AudienceExpr {
  const form = expr.form;
  switch (form?.$case) {
    case 'tagRules': {
      // The same fields under their JSON names; the converter checks the operator strings.
      const rules = form.value.rules.map((rule) => ({
        operator: rule.operator,
        is_not: rule.isNot,
        tag_items: rule.tagItems.map((item) => ({
          tags: item.tags,
          is_not: item.isNot,
          tags_operator: item.tagsOperator,
          items_operator: item.itemsOperator,
          tag_type: item.tagType,
        })),
      }));
      const rulesField = `${field}.tag_rules.rules`;
      return finish(new Converter().rules(rules, rulesField), rulesField);
    }
    case 'tagList':
      return fromTagList({ tags: form.value.tags, op: form.value.op }, `${field}.tag_list`);
    default:
      throw invalidArgument(field, 'needs tag_rules or tag_list');
  }
}

function finish(raw: AudienceExpr, field: string): AudienceExpr {
  // Conversion already checked every tag against its TPNS path; this checks depth and size.
  validateExpression(raw, field);
  return normalize(raw);
}

/** Splits `[t0, op1 t1, op2 t2, ...]` at its ORs and ANDs each run: AND binds tighter than OR. */
function chain(terms: AudienceExpr[], operators: TpnsOperator[]): AudienceExpr {
  const runs: AudienceExpr[][] = [[terms[0]!]];
  for (let i = 1; i < terms.length; i++) {
    if (operators[i] === 'AND') runs[runs.length - 1]!.push(terms[i]!);
    else runs.push([terms[i]!]);
  }
  return junction(
    'OR',
    runs.map((run) => junction('AND', run)),
  );
}

function junction(op: TpnsOperator, terms: AudienceExpr[]): AudienceExpr {
  if (terms.length === 1) return terms[0]!;
  return { kind: op === 'AND' ? 'and' : 'or', terms };
}

function negate(expr: AudienceExpr, isNot: boolean): AudienceExpr {
  return isNot ? { kind: 'not', term: expr } : expr;
}

class Converter {
  private readonly tags = new Set<string>();
  private occurrences = 0;

  rules(value: unknown, field: string): AudienceExpr {
    const rules = this.array(value, field, 'rule');
    const terms: AudienceExpr[] = [];
    const operators: TpnsOperator[] = [];
    rules.forEach((item, i) => {
      const path = `${field}[${i}]`;
      const rule = this.object(item, path);
      const items = this.array(rule.tag_items, `${path}.tag_items`, 'tag item');
      const itemTerms: AudienceExpr[] = [];
      const itemOperators: TpnsOperator[] = [];
      items.forEach((entry, j) => {
        const itemPath = `${path}.tag_items[${j}]`;
        const tagItem = this.object(entry, itemPath);
        itemTerms.push(this.item(tagItem, itemPath));
        itemOperators.push(
          j === 0 ? 'OR' : this.operator(tagItem.items_operator, `${itemPath}.items_operator`),
        );
      });
      terms.push(negate(chain(itemTerms, itemOperators), this.flag(rule.is_not, `${path}.is_not`)));
      operators.push(i === 0 ? 'OR' : this.operator(rule.operator, `${path}.operator`));
    });
    return chain(terms, operators);
  }

  private item(item: Record<string, unknown>, path: string): AudienceExpr {
    const tagType = item.tag_type ?? '';
    if (typeof tagType !== 'string' || !Object.hasOwn(TAG_TYPES, tagType)) {
      throw invalidArgument(
        `${path}.tag_type`,
        `unknown tag_type ${JSON.stringify(tagType)}; one of ${Object.keys(TAG_TYPES)
          .filter((type) => type !== '' && TAG_TYPES[type] !== null)
          .join(', ')}, or empty for tags in pushd form`,
      );
    }
    const kind = TAG_TYPES[tagType];
    if (kind === null || kind === undefined) {
      throw invalidArgument(`${path}.tag_type`, `pushd keeps no ${tagType} tags`);
    }
    const tags = this.array(item.tags, `${path}.tags`, 'tag');
    const terms = tags.map((tag, k) => this.tag(tag, kind, `${path}.tags[${k}]`));
    const op = tags.length > 1 ? this.operator(item.tags_operator, `${path}.tags_operator`) : 'OR';
    return negate(junction(op, terms), this.flag(item.is_not, `${path}.is_not`));
  }

  tag(value: unknown, kind: 'user' | 'pushd' | BuiltinTagKey, path: string): AudienceExpr {
    if (typeof value !== 'string') throw invalidArgument(path, 'must be a string');
    let tag = value;
    if (kind === 'user') {
      if (value.startsWith(RESERVED_TAG_PREFIX)) {
        throw invalidArgument(
          path,
          `${JSON.stringify(value)}: xg_user_define tags cannot use the reserved prefix "${RESERVED_TAG_PREFIX}" (leave tag_type empty for built-in tags)`,
        );
      }
    } else if (kind !== 'pushd') {
      tag = builtinTag(kind, value);
    }
    validateExpressionTag(tag, path);
    this.tags.add(tag);
    if (this.tags.size > MAX_EXPRESSION_TAGS) {
      throw limitExceeded(
        path,
        `an expression may name at most ${MAX_EXPRESSION_TAGS} distinct tags`,
        MAX_EXPRESSION_TAGS,
      );
    }
    // Repeated tags pass the distinct-tag limit; stop a huge input here, before building all of it.
    if (++this.occurrences > MAX_EXPRESSION_NODES) {
      throw limitExceeded(path, `at most ${MAX_EXPRESSION_NODES} tags in all`, MAX_EXPRESSION_NODES);
    }
    return { kind: 'tag', tag };
  }

  operator(value: unknown, path: string): TpnsOperator {
    if (value === 'OR' || value === 'AND') return value;
    throw invalidArgument(path, `must be "OR" or "AND", not ${JSON.stringify(value ?? null)}`);
  }

  private flag(value: unknown, path: string): boolean {
    if (value === undefined || value === null) return false;
    if (typeof value !== 'boolean') throw invalidArgument(path, 'must be true or false');
    return value;
  }

  object(value: unknown, path: string): Record<string, unknown> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw invalidArgument(path, 'must be an object');
    }
    return value as Record<string, unknown>;
  }

  array(value: unknown, path: string, what: string): unknown[] {
    if (!Array.isArray(value) || value.length === 0) {
      throw invalidArgument(path, `must be a non-empty array (at least one ${what})`);
    }
    return value;
  }
}
