/**
 * # Audience expressions
 *
 * A push that is not addressed to tokens or accounts targets an *audience expression*: a boolean
 * expression over the tags of an app's devices. This file is the model every component shares: the
 * dispatch service builds it from a request, the tag index compiles it to Redis bitmap operations, and
 * gateways evaluate it against the tags of the devices they hold. They must agree on what it means, so
 * there is exactly one shape ({@link AudienceExpr}), one set of limits and one normalization.
 *
 * ## The model
 *
 * - `{ kind: 'all' }`: every registered device of the app (a broadcast; MISSION rule 8's covered devices).
 * - `{ kind: 'tag', tag }`: the device has the tag.
 * - `{ kind: 'and', terms }`, `{ kind: 'or', terms }`: all / any of 2 or more terms.
 * - `{ kind: 'not', term }`: the registered devices that do not match `term` (the complement within
 *   `all`, which is how the bitmap index computes it: ALL ANDNOT term).
 *
 * Tags (MISSION rules 3, 7) are of two kinds, told apart by the reserved prefix `pushd:`:
 * - user tags, set through the tag service: 1 to 50 characters, no whitespace or control characters,
 *   not starting with `pushd:` (the same rule as services/tag `validateTags`);
 * - built-in attribute tags, maintained by pushd itself: `pushd:<key>:<value>` with a key of
 *   {@link BUILTIN_TAG_KEYS} (`pushd:platform:ios`, `pushd:app_version:2.1.0`, `pushd:os_version:14`,
 *   `pushd:locale:zh-CN`, `pushd:province:广东`, `pushd:city:深圳`, `pushd:active:7d`). An unknown key is
 *   refused rather than silently matching nothing, so a typo cannot turn a push into a no-op.
 *
 * Accounts are not tags (rule 7): an expression never names an account; pushes to accounts are another
 * audience kind. Platforms (rule 12) are built-in tags: both platforms in one call is an expression without
 * a platform term, one platform is `and(pushd:platform:ios, ...)`.
 *
 * ## Pipeline
 *
 * Input (an AST from JSON, infix text from the CLI, TPNS `tag_rules` / `tag_list` from the REST API or
 * their protobuf form) is checked by {@link validateExpression} (the TPNS converters and `parseInfix` do it
 * themselves, naming their own fields), then {@link normalize}d. Normalizing never increases the depth, the
 * node count or the tag count, so a valid expression stays valid; the index and the gateways receive only
 * normalized expressions.
 *
 * ## TPNS forms (tpns.ts)
 *
 * TPNS v3 `POST /v3/push/app` with `audience_type: "tag"` has two fields (the Push API page,
 * https://www.tencentcloud.com/document/product/1024/33764, and its Chinese original
 * https://cloud.tencent.com/document/product/548/39064):
 *
 * - `tag_list: { tags, op }` is `and(tags...)` for op "AND", `or(tags...)` for op "OR"; its tags are in
 *   pushd form (user tags or full `pushd:` names).
 * - `tag_rules: [rule...]`, each rule `{ tag_items: [item...], operator, is_not }`, each item
 *   `{ tags, is_not, tags_operator, items_operator, tag_type }`:
 *   - an item is its tags combined by `tags_operator`, negated if `is_not`;
 *   - a rule is its items chained by `items_operator`, negated if the rule's `is_not`;
 *   - the expression is the rules chained by each rule's `operator`.
 *
 *   In a chain, the operator on element i joins element i to the elements before it; the operator on the
 *   first element is ignored ("invalid data" in the docs). AND takes precedence over OR ("for different
 *   rules, AND takes precedence over OR", the note on `items_operator`), so the chain
 *   `[a, OR b, AND c]` is `a OR (b AND c)`: we split the chain at its ORs and AND each run. We apply the
 *   same precedence to both chains (items in a rule, rules in `tag_rules`).
 *   - `tag_type` says what the tags are: `xg_user_define` is user tags; TPNS preset types map to pushd
 *     built-ins (`xg_auto_version` → `pushd:app_version:`, `xg_auto_province` → `pushd:province:`,
 *     `xg_auto_city` → `pushd:city:`, `xg_auto_systemversion` → `pushd:os_version:`,
 *     `xg_auto_systemlanguage` → `pushd:locale:`, `xg_auto_active` → `pushd:active:` with values
 *     1d/7d/30d, not TPNS's per-day dates); presets pushd does not keep (SDK version, brand, model,
 *     country) are refused. An empty `tag_type` (a pushd extension) means the tags are written in pushd
 *     form: user tags or full `pushd:` names. Values are taken verbatim: pushd does not translate TPNS's
 *     pinyin province names.
 *   - If both fields are present, `tag_list` is ignored (TPNS: "tag_list becomes invalid automatically").
 *
 * The Push API page's first example (provinces guangdong OR hunan, AND active on a day, AND custom tag
 * male), with the day replaced by a pushd window, converts to (infix form, infix.ts)
 * `(pushd:province:guangdong OR pushd:province:hunan) AND pushd:active:1d AND "male"`.
 */
import { invalidArgument, PushdError } from '@pushd/common';
import { Platform } from '@pushd/proto';

/** The normalized audience expression every component evaluates. */
export type AudienceExpr =
  | { kind: 'all' } // every registered device of the app
  | { kind: 'tag'; tag: string } // the device has this tag (user or built-in)
  | { kind: 'and'; terms: AudienceExpr[] } // 2..MAX terms (bounded by MAX_EXPRESSION_NODES)
  | { kind: 'or'; terms: AudienceExpr[] }
  | { kind: 'not'; term: AudienceExpr };

/** Reserved for built-in attribute tags; users cannot set tags under it (services/tag refuses them). */
export const RESERVED_TAG_PREFIX = 'pushd:';

/** Longest user tag (and built-in tag value), in UTF-16 code units as the tag service counts them. */
export const TAG_MAX_CHARS = 50;

/**
 * Distinct tags one expression may name. TPNS caps its `tag_list` at 512 characters (about 50 tags of 10
 * characters); the bitmap index loads one bitmap per distinct tag, so this bounds the work of one push.
 */
export const MAX_EXPRESSION_TAGS = 50;

/**
 * Deepest nesting of operators (and, or, not) on any path from the root; a lone tag has depth 0,
 * `and(a, not(b))` depth 2. The deepest TPNS `tag_rules` needs 7 (rules OR of ANDs, rule NOT, items OR
 * of ANDs, item NOT, tags operator) and dispatch may wrap it in one more AND (a platform restriction).
 * It bounds the recursion of the evaluators and the temporary keys of the bitmap compiler.
 */
export const MAX_EXPRESSION_DEPTH = 8;

/**
 * Nodes (all, tag, and, or, not) in one expression, counting repeated tags each time. Bounds the cost of
 * evaluating one expression per device (gateways do it for every held device on every broadcast) and of
 * compiling it; also the most terms one and/or can have.
 */
export const MAX_EXPRESSION_NODES = 256;

/** Keys of built-in tags `pushd:<key>:<value>`. The values of a few keys are closed sets (below). */
export const BUILTIN_TAG_KEYS = [
  'platform',
  'app_version',
  'os_version',
  'locale',
  'province',
  'city',
  'active',
] as const;
export type BuiltinTagKey = (typeof BUILTIN_TAG_KEYS)[number];

/**
 * Values of keys that are closed sets; app_version, os_version and locale take what the registry accepts
 * (REGISTRATION_VALUE_KEYS), the other keys any 1..TAG_MAX_CHARS value without whitespace.
 */
export const BUILTIN_TAG_VALUES: Readonly<Partial<Record<BuiltinTagKey, readonly string[]>>> = {
  platform: ['android', 'ios'],
  // Active within the last day, week, month: relative windows the registry maintains.
  active: ['1d', '7d', '30d'],
};

/** The built-in tag for a key and value, e.g. `builtinTag('platform', 'ios')` is `pushd:platform:ios`. */
export function builtinTag(key: BuiltinTagKey, value: string): string {
  return `${RESERVED_TAG_PREFIX}${key}:${value}`;
}

/** `pushd:platform:android` / `pushd:platform:ios` for the two platforms; undefined for any other value. */
export function platformTag(platform: Platform): string | undefined {
  if (platform === Platform.PLATFORM_ANDROID) return builtinTag('platform', 'android');
  if (platform === Platform.PLATFORM_IOS) return builtinTag('platform', 'ios');
  return undefined;
}

const FORBIDDEN_CHARS = /[\s\p{Cc}]/u;

/**
 * Built-in keys whose values are what a device gave at registration, which the registry takes as up to
 * 64 characters without control characters (its DETAIL_MAX_CHARS; spaces allowed, as in "Android 14").
 */
const REGISTRATION_VALUE_KEYS: ReadonlySet<string> = new Set(['app_version', 'os_version', 'locale']);
export const REGISTRATION_VALUE_MAX_CHARS = 64;

/** A user tag or a built-in tag with a known key and a valid value; otherwise INVALID_ARGUMENT on `field`. */
export function validateExpressionTag(tag: unknown, field: string): asserts tag is string {
  if (typeof tag !== 'string') throw invalidArgument(field, 'must be a string');
  if (!tag.startsWith(RESERVED_TAG_PREFIX)) {
    if (tag.length < 1 || tag.length > TAG_MAX_CHARS || FORBIDDEN_CHARS.test(tag)) {
      throw invalidArgument(
        field,
        `${JSON.stringify(tag)} must be 1 to ${TAG_MAX_CHARS} characters without whitespace or control characters`,
      );
    }
    return;
  }
  const rest = tag.slice(RESERVED_TAG_PREFIX.length);
  const colon = rest.indexOf(':');
  const key = colon < 0 ? rest : rest.slice(0, colon);
  if (colon < 0 || !(BUILTIN_TAG_KEYS as readonly string[]).includes(key)) {
    throw invalidArgument(
      field,
      `${JSON.stringify(tag)} is not a built-in tag: expected ${RESERVED_TAG_PREFIX}<key>:<value> with key one of ${BUILTIN_TAG_KEYS.join(', ')}`,
    );
  }
  const value = rest.slice(colon + 1);
  const allowed = BUILTIN_TAG_VALUES[key as BuiltinTagKey];
  if (allowed !== undefined) {
    if (!allowed.includes(value)) {
      throw invalidArgument(
        field,
        `${JSON.stringify(tag)}: ${RESERVED_TAG_PREFIX}${key} takes one of ${allowed.join(', ')}`,
      );
    }
    return;
  }
  if (REGISTRATION_VALUE_KEYS.has(key)) {
    // What the device registered, as the registry accepted it ("Android 14" included): any such value
    // must be one a push can name.
    if (value.length < 1 || value.length > REGISTRATION_VALUE_MAX_CHARS || /\p{Cc}/u.test(value)) {
      throw invalidArgument(
        field,
        `${JSON.stringify(tag)}: the value must be 1 to ${REGISTRATION_VALUE_MAX_CHARS} characters without control characters`,
      );
    }
    return;
  }
  if (value.length < 1 || value.length > TAG_MAX_CHARS || FORBIDDEN_CHARS.test(value)) {
    throw invalidArgument(
      field,
      `${JSON.stringify(tag)}: the value must be 1 to ${TAG_MAX_CHARS} characters without whitespace or control characters`,
    );
  }
}

/** INVALID_ARGUMENT for a limit of this file, with the limit in the metadata for clients. */
export function limitExceeded(field: string, problem: string, limit: number): PushdError {
  return new PushdError('INVALID_ARGUMENT', `${field}: ${problem}`, {
    metadata: { field, limit: String(limit) },
  });
}

interface ValidationState {
  readonly root: string;
  readonly tags: Set<string>;
  nodes: number;
}

/**
 * Checks that `expr` is a well-formed expression within the limits; throws PushdError INVALID_ARGUMENT
 * whose metadata.field is the path of the offending node (`expression.terms[1].term.tag`), or `field`
 * itself for a limit on the whole expression. Input may be anything (parsed JSON): nothing is assumed.
 */
export function validateExpression(expr: unknown, field = 'expression'): asserts expr is AudienceExpr {
  checkNode(expr, field, 0, { root: field, tags: new Set(), nodes: 0 });
}

function checkNode(node: unknown, path: string, depth: number, state: ValidationState): void {
  state.nodes++;
  if (state.nodes > MAX_EXPRESSION_NODES) {
    throw limitExceeded(state.root, `at most ${MAX_EXPRESSION_NODES} nodes`, MAX_EXPRESSION_NODES);
  }
  if (typeof node !== 'object' || node === null || Array.isArray(node)) {
    throw invalidArgument(path, 'must be an expression object with a kind');
  }
  const record = node as Record<string, unknown>;
  const kind = record.kind;
  switch (kind) {
    case 'all':
      return;
    case 'tag': {
      const tag = record.tag;
      validateExpressionTag(tag, `${path}.tag`);
      state.tags.add(tag);
      if (state.tags.size > MAX_EXPRESSION_TAGS) {
        throw limitExceeded(
          `${path}.tag`,
          `an expression may name at most ${MAX_EXPRESSION_TAGS} distinct tags`,
          MAX_EXPRESSION_TAGS,
        );
      }
      return;
    }
    case 'not':
      checkDepth(path, depth, state);
      checkNode(record.term, `${path}.term`, depth + 1, state);
      return;
    case 'and':
    case 'or': {
      checkDepth(path, depth, state);
      const terms = record.terms;
      if (!Array.isArray(terms) || terms.length < 2) {
        throw invalidArgument(`${path}.terms`, `${kind} needs an array of at least 2 terms`);
      }
      for (let i = 0; i < terms.length; i++) checkNode(terms[i], `${path}.terms[${i}]`, depth + 1, state);
      return;
    }
    default:
      throw invalidArgument(`${path}.kind`, 'must be one of all, tag, and, or, not');
  }
}

function checkDepth(path: string, depth: number, state: ValidationState): void {
  if (depth + 1 > MAX_EXPRESSION_DEPTH) {
    throw limitExceeded(
      state.root,
      `operators nest at most ${MAX_EXPRESSION_DEPTH} deep (at ${path})`,
      MAX_EXPRESSION_DEPTH,
    );
  }
}

const ALL: AudienceExpr = { kind: 'all' };
/** No device: the only way to write the empty audience. */
const NONE: AudienceExpr = { kind: 'not', term: ALL };

/**
 * The same set of devices in canonical shape: nested and/or of the same kind are flattened, double
 * negations removed, repeated terms dropped (first occurrence kept, order otherwise unchanged so logs read
 * like the request), one-term and/or replaced by the term, `all` and `not(all)` folded (`and(all, x)` is
 * `x`, `or(all, x)` is `all`, `and(not(all), x)` is `not(all)`, `or(not(all), x)` is `x`), so that `all`
 * only remains as the whole expression or as `not(all)`, the empty audience. Idempotent; never increases
 * depth, nodes or tags. Returns new objects where it changes something and shares unchanged leaves.
 */
export function normalize(expr: AudienceExpr): AudienceExpr {
  switch (expr.kind) {
    case 'all':
    case 'tag':
      return expr;
    case 'not': {
      const term = normalize(expr.term);
      return term.kind === 'not' ? term.term : { kind: 'not', term };
    }
    case 'and':
    case 'or':
      return normalizeJunction(expr.kind, expr.terms);
  }
}

function normalizeJunction(kind: 'and' | 'or', terms: readonly AudienceExpr[]): AudienceExpr {
  // `all` is the identity of and and absorbs or; `not(all)` (no device) the other way round.
  const identity = kind === 'and' ? ALL : NONE;
  const absorbing = kind === 'and' ? NONE : ALL;
  const identityKey = keyOf(identity);
  const absorbingKey = keyOf(absorbing);
  const out: AudienceExpr[] = [];
  const seen = new Set<string>();
  let absorbed = false;
  const add = (term: AudienceExpr) => {
    const key = keyOf(term);
    if (key === absorbingKey) absorbed = true;
    if (key === identityKey || seen.has(key)) return;
    seen.add(key);
    out.push(term);
  };
  for (const term of terms) {
    const normal = normalize(term);
    if (normal.kind === kind) for (const inner of normal.terms) add(inner);
    else add(normal);
  }
  if (absorbed) return absorbing;
  if (out.length === 0) return identity;
  if (out.length === 1) return out[0]!;
  return { kind, terms: out };
}

/** A string that is equal for structurally equal expressions (tags are JSON strings: unambiguous). */
function keyOf(expr: AudienceExpr): string {
  switch (expr.kind) {
    case 'all':
      return '*';
    case 'tag':
      return JSON.stringify(expr.tag);
    case 'not':
      return `!${keyOf(expr.term)}`;
    case 'and':
    case 'or':
      return `${expr.kind}(${expr.terms.map(keyOf).join(',')})`;
  }
}

/** The distinct tags the expression names, in order of first appearance. */
export function tagsOf(expr: AudienceExpr): string[] {
  const tags = new Set<string>();
  const walk = (node: AudienceExpr): void => {
    switch (node.kind) {
      case 'all':
        return;
      case 'tag':
        tags.add(node.tag);
        return;
      case 'not':
        walk(node.term);
        return;
      case 'and':
      case 'or':
        for (const term of node.terms) walk(term);
        return;
    }
  };
  walk(expr);
  return [...tags];
}
