// Compares the two evaluators of evaluate.ts the way a gateway uses them on a broadcast: one expression,
// many devices, each with its own tag set and a `has` made once per device.
//   npx tsx packages/audience/scripts/bench-matchers.ts
import { compileMatcher, type HasTag, matches } from '../src/evaluate.js';
import { type AudienceExpr, normalize } from '../src/expression.js';
import { parseInfix } from '../src/infix.js';
import { fromTagRules } from '../src/tpns.js';

const DEVICES = 20_000;
const ROUNDS = 5;
const TRIALS = 15;

const expressions: [string, AudienceExpr][] = [
  ['one tag', parseInfix('"vip"')],
  ['platform and tag', parseInfix('pushd:platform:ios AND "vip"')],
  ['readme example', parseInfix('("vip" AND pushd:platform:ios) OR NOT "churned"')],
  ['or of 10 tags', parseInfix(Array.from({ length: 10 }, (_, i) => `"t${i}"`).join(' OR '))],
  [
    'tpns two rules',
    fromTagRules([
      {
        tag_items: [
          { tags: ['guangdong', 'jiangsu'], tags_operator: 'OR', tag_type: 'xg_auto_province' },
          { tags: ['1d', '7d'], tags_operator: 'OR', items_operator: 'AND', tag_type: 'xg_auto_active' },
          { tags: ['t3'], is_not: true, items_operator: 'AND', tag_type: 'xg_user_define' },
        ],
      },
      { tag_items: [{ tags: ['male', 't5'], tags_operator: 'AND' }], operator: 'OR' },
    ]),
  ],
];

// Deterministic pseudo-random devices: a few user tags and the built-ins a registry would set.
let seed = 42;
const random = () => {
  seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
  return seed / 2_147_483_648;
};
const devices: HasTag[] = Array.from({ length: DEVICES }, () => {
  const tags = new Set<string>([
    random() < 0.5 ? 'pushd:platform:ios' : 'pushd:platform:android',
    random() < 0.3 ? 'pushd:province:guangdong' : 'pushd:province:jiangsu',
    'pushd:active:30d',
  ]);
  if (random() < 0.4) tags.add('pushd:active:7d');
  for (const tag of ['vip', 'churned', 'male', 't0', 't3', 't5', 't9']) if (random() < 0.3) tags.add(tag);
  return (tag: string) => tags.has(tag);
});

/** Best of TRIALS (each ROUNDS passes over all devices): the least disturbed by other load on the machine. */
function time(run: () => number): number {
  let best = Number.POSITIVE_INFINITY;
  for (let trial = 0; trial < TRIALS; trial++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < ROUNDS; i++) run();
    best = Math.min(best, Number(process.hrtime.bigint() - start) / ROUNDS / DEVICES);
  }
  return best;
}

console.log(`${DEVICES} devices, best of ${3 * TRIALS} x ${ROUNDS} passes, ns per device evaluation`);
for (const [name, raw] of expressions) {
  const expr = normalize(raw);
  const walk = () => {
    let hits = 0;
    for (const has of devices) if (matches(expr, has)) hits++;
    return hits;
  };
  const compiled = () => {
    const matcher = compileMatcher(expr); // once per push, inside the timing on purpose
    let hits = 0;
    for (const has of devices) if (matcher(has)) hits++;
    return hits;
  };
  const hits = walk();
  if (compiled() !== hits) throw new Error(`${name}: the two evaluators disagree`);
  // Alternate the two so that a burst of load on the machine hits both alike.
  let walkNs = Number.POSITIVE_INFINITY;
  let compiledNs = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 3; i++) {
    walkNs = Math.min(walkNs, time(walk));
    compiledNs = Math.min(compiledNs, time(compiled));
  }
  console.log(
    `${name.padEnd(18)} matches ${walkNs.toFixed(1).padStart(6)}  compileMatcher ${compiledNs.toFixed(1).padStart(6)}` +
      `  (${(walkNs / compiledNs).toFixed(2)}x)  ${hits} of ${DEVICES} match`,
  );
}
