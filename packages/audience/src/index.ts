// @pushd/audience: the audience expression every component evaluates (expression.ts), its infix form,
// its evaluators, and the TPNS forms it is built from. Listed one by one so that nothing leaks by `export *`.

export { type DeviceAttributes, deviceTagTest } from './device-tags.js';
export { compileMatcher, type HasTag, type Matcher, matches } from './evaluate.js';
export {
  type AudienceExpr,
  BUILTIN_TAG_KEYS,
  BUILTIN_TAG_VALUES,
  type BuiltinTagKey,
  builtinTag,
  limitExceeded,
  MAX_EXPRESSION_DEPTH,
  MAX_EXPRESSION_NODES,
  MAX_EXPRESSION_TAGS,
  normalize,
  platformTag,
  REGISTRATION_VALUE_MAX_CHARS,
  RESERVED_TAG_PREFIX,
  TAG_MAX_CHARS,
  tagsOf,
  validateExpression,
  validateExpressionTag,
} from './expression.js';
export { MAX_INFIX_CHARS, parseInfix, toInfix } from './infix.js';
export {
  fromProto,
  fromTagList,
  fromTagRules,
  fromTpnsTagFields,
  type TpnsOperator,
  type TpnsTagItem,
  type TpnsTagList,
  type TpnsTagRule,
} from './tpns.js';
