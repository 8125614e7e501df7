/**
 * NATS subject matching without allocation: `*` matches exactly one token, `>` (last token only) matches
 * one or more remaining tokens. Used by MemoryBus for routing, stream ownership and consumer filters.
 */
export function subjectMatches(pattern: string, subject: string): boolean {
  const pLen = pattern.length;
  const sLen = subject.length;
  let p = 0;
  let s = 0;
  for (;;) {
    let pEnd = pattern.indexOf('.', p);
    if (pEnd === -1) pEnd = pLen;
    const pTokenLen = pEnd - p;
    // '>' as the last pattern token matches one or more remaining subject tokens.
    if (pTokenLen === 1 && pEnd === pLen && pattern.charCodeAt(p) === 62) return s < sLen;
    if (s >= sLen) return false;
    let sEnd = subject.indexOf('.', s);
    if (sEnd === -1) sEnd = sLen;
    if (!(pTokenLen === 1 && pattern.charCodeAt(p) === 42)) {
      if (pTokenLen !== sEnd - s) return false;
      for (let i = 0; i < pTokenLen; i++) {
        if (pattern.charCodeAt(p + i) !== subject.charCodeAt(s + i)) return false;
      }
    }
    p = pEnd + 1;
    s = sEnd + 1;
    if (p > pLen) return s > sLen;
  }
}

/** A subject a message can be published to: non-empty tokens, no wildcards, no whitespace. */
export function isValidPublishSubject(subject: string): boolean {
  if (subject.length === 0) return false;
  let tokenStart = 0;
  for (let i = 0; i <= subject.length; i++) {
    const c = i === subject.length ? 46 : subject.charCodeAt(i);
    if (c === 46 /* . */) {
      if (i === tokenStart) return false;
      if (i - tokenStart === 1) {
        const t = subject.charCodeAt(tokenStart);
        if (t === 42 || t === 62) return false;
      }
      tokenStart = i + 1;
    } else if (c === 32 || c === 9 || c === 10 || c === 13) {
      return false;
    }
  }
  return true;
}

/** A subject one can subscribe to: non-empty tokens, `*` whole tokens, `>` only as the last token. */
export function isValidSubscribeSubject(subject: string): boolean {
  if (subject.length === 0) return false;
  let tokenStart = 0;
  for (let i = 0; i <= subject.length; i++) {
    const c = i === subject.length ? 46 : subject.charCodeAt(i);
    if (c === 46) {
      const len = i - tokenStart;
      if (len === 0) return false;
      if (len === 1 && subject.charCodeAt(tokenStart) === 62 && i !== subject.length) return false;
      tokenStart = i + 1;
    } else if (c === 32 || c === 9 || c === 10 || c === 13) {
      return false;
    } else if (
      (c === 42 || c === 62) &&
      (i !== tokenStart || (i + 1 < subject.length && subject.charCodeAt(i + 1) !== 46))
    ) {
      return false;
    }
  }
  return true;
}
