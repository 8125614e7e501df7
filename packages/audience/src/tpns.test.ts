import { PushdError } from '@pushd/common';
import { TagExpression } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import { matches } from './evaluate.js';
import { type AudienceExpr, MAX_EXPRESSION_NODES, MAX_EXPRESSION_TAGS } from './expression.js';
import { allTagSets, and, not, or, seededRandom, TEST_TAGS, t } from './test-expressions.js';
import {
  fromProto,
  fromTagList,
  fromTagRules,
  fromTpnsTagFields,
  type TpnsOperator,
  type TpnsTagItem,
  type TpnsTagRule,
} from './tpns.js';

function refused(run: () => unknown): PushdError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(PushdError);
    return error as PushdError;
  }
  throw new Error('expected a PushdError');
}

const province = (name: string) => t(`pushd:province:${name}`);
const active = (window: string) => t(`pushd:active:${window}`);

// The examples of the TPNS documentation, copied field for field: the Push API page
// (https://www.tencentcloud.com/document/product/1024/33764, "Push by tag (using tag_rules)") and the Tag
// page (https://www.tencentcloud.com/document/product/1024/35392, "Calling the push API for tag push").
describe('fromTagRules on the documented examples', () => {
  // Sample 1: "male users who were active on April 8, 2020 in Guangdong or Hunan province",
  // expression (xg_auto_province.guangdong OR xg_auto_province.hunan) AND xg_auto_active.20200408 AND
  // xg_user_define.male.
  const sample1 = (activeTag: string): TpnsTagRule[] => [
    {
      tag_items: [
        {
          tags: ['guangdong', 'hunan'],
          is_not: false,
          tags_operator: 'OR',
          items_operator: 'OR',
          tag_type: 'xg_auto_province',
        },
        {
          tags: [activeTag],
          is_not: false,
          tags_operator: 'OR',
          items_operator: 'AND',
          tag_type: 'xg_auto_active',
        },
        {
          tags: ['male'],
          is_not: false,
          tags_operator: 'OR',
          items_operator: 'AND',
          tag_type: 'xg_user_define',
        },
      ],
      operator: 'OR',
      is_not: false,
    },
  ];

  it('sample 1, with pushd activity windows for TPNS dates', () => {
    const error = refused(() => fromTagRules(sample1('20200408')));
    expect(error.metadata.field).toBe('tag_rules[0].tag_items[1].tags[0]');
    expect(error.message).toContain('takes one of 1d, 7d, 30d');

    expect(fromTagRules(sample1('1d'))).toEqual(
      and(or(province('guangdong'), province('hunan')), active('1d'), t('male')),
    );
  });

  // Sample 2: "Huawei users who were active in the last 3 days on an application version other than
  // 1.0.2", expression (active.20200406 OR active.20200407 OR active.20200408) AND (NOT
  // xg_auto_version.1.0.2) AND xg_auto_devicebrand.huawei. The page spells the second tag_type
  // "xg_auto_verison".
  const sample2 = (activeTags: string[], versionType: string, brand: Partial<TpnsTagItem>): TpnsTagRule[] => [
    {
      tag_items: [
        {
          tags: activeTags,
          is_not: false,
          tags_operator: 'OR',
          items_operator: 'OR',
          tag_type: 'xg_auto_active',
        },
        { tags: ['1.0.2'], is_not: true, tags_operator: 'OR', items_operator: 'AND', tag_type: versionType },
        {
          tags: ['huawei'],
          is_not: false,
          tags_operator: 'OR',
          items_operator: 'AND',
          tag_type: 'xg_auto_devicebrand',
          ...brand,
        },
      ],
      operator: 'OR',
      is_not: false,
    },
  ];

  it('sample 2, refusing what pushd cannot express at the field that asks for it', () => {
    const dates = ['20200406', '20200407', '20200408'];
    expect(refused(() => fromTagRules(sample2(dates, 'xg_auto_verison', {}))).metadata.field).toBe(
      'tag_rules[0].tag_items[0].tags[0]',
    );
    const typo = refused(() => fromTagRules(sample2(['7d'], 'xg_auto_verison', {})));
    expect(typo.metadata.field).toBe('tag_rules[0].tag_items[1].tag_type');
    expect(typo.message).toContain('unknown tag_type "xg_auto_verison"');
    const brand = refused(() => fromTagRules(sample2(['7d'], 'xg_auto_version', {})));
    expect(brand.metadata.field).toBe('tag_rules[0].tag_items[2].tag_type');
    expect(brand.message).toContain('pushd keeps no xg_auto_devicebrand tags');

    expect(fromTagRules(sample2(['1d', '7d'], 'xg_auto_version', { tag_type: 'xg_user_define' }))).toEqual(
      and(or(active('1d'), active('7d')), not(t('pushd:app_version:1.0.2')), t('huawei')),
    );
  });

  it('the Tag page example: two rules joined by the second rule operator', () => {
    // "male users in Guangdong and Jiangsu who were active on 2020-04-23, 2020-04-22, or 2020-04-21"
    const rules: TpnsTagRule[] = [
      {
        tag_items: [
          {
            tags: ['guangdong', 'jiangsu'],
            is_not: false,
            tags_operator: 'OR',
            items_operator: 'OR',
            tag_type: 'xg_auto_province',
          },
          {
            tags: ['1d', '7d'],
            is_not: false,
            tags_operator: 'OR',
            items_operator: 'AND',
            tag_type: 'xg_auto_active',
          },
        ],
        operator: 'OR',
        is_not: false,
      },
      {
        tag_items: [
          {
            tags: ['male'],
            is_not: false,
            tags_operator: 'OR',
            items_operator: 'OR',
            tag_type: 'xg_user_define',
          },
        ],
        operator: 'AND',
        is_not: false,
      },
    ];
    expect(fromTagRules(rules)).toEqual(
      and(or(province('guangdong'), province('jiangsu')), or(active('1d'), active('7d')), t('male')),
    );
  });

  it('the minimal form SDKs send: one custom tag, operators left empty', () => {
    expect(
      fromTagRules([
        {
          tag_items: [{ tags: ['zh'], tag_type: 'xg_user_define', tags_operator: '', items_operator: '' }],
          operator: '',
        },
      ]),
    ).toEqual(t('zh'));
  });
});

/** A rule or item chain in the shape TPNS takes, from `[term, op, term, op, term...]`. */
function items(...chain: (string | TpnsOperator)[]): TpnsTagItem[] {
  const out: TpnsTagItem[] = [];
  for (let i = 0; i < chain.length; i += 2) {
    out.push({ tags: [chain[i]!], items_operator: i === 0 ? undefined : (chain[i - 1] as TpnsOperator) });
  }
  return out;
}

describe('fromTagRules chains', () => {
  it.each<[string, TpnsTagItem[], AudienceExpr]>([
    [
      'AND binds tighter than a preceding OR',
      items('a', 'OR', 'b', 'AND', 'c'),
      or(t('a'), and(t('b'), t('c'))),
    ],
    [
      'AND binds tighter than a following OR',
      items('a', 'AND', 'b', 'OR', 'c'),
      or(and(t('a'), t('b')), t('c')),
    ],
    [
      'runs of AND between ORs',
      items('a', 'AND', 'b', 'OR', 'c', 'OR', 'd', 'AND', 'a'),
      or(and(t('a'), t('b')), t('c'), and(t('d'), t('a'))),
    ],
    [
      'the first items_operator is ignored',
      [
        { tags: ['a'], items_operator: 'AND' },
        { tags: ['b'], items_operator: 'OR' },
      ],
      or(t('a'), t('b')),
    ],
  ])('%s', (_name, tagItems, expected) => {
    expect(fromTagRules([{ tag_items: tagItems }])).toEqual(expected);
  });

  it('chains rules the same way, with their negations', () => {
    const rule = (tag: string, operator?: TpnsOperator, isNot = false): TpnsTagRule => ({
      tag_items: [{ tags: [tag] }],
      operator,
      is_not: isNot,
    });
    expect(fromTagRules([rule('a', 'AND'), rule('b', 'OR'), rule('c', 'AND', true)])).toEqual(
      or(t('a'), and(t('b'), not(t('c')))),
    );
  });

  it('negates an item after combining its tags, and a rule after chaining its items', () => {
    expect(
      fromTagRules([
        {
          tag_items: [
            { tags: ['a', 'b'], tags_operator: 'AND', is_not: true },
            { tags: ['c'], items_operator: 'OR' },
          ],
          is_not: true,
        },
      ]),
    ).toEqual(not(or(not(and(t('a'), t('b'))), t('c'))));
  });

  it('matches a direct evaluation of TPNS semantics on random rule sets and every tag set', () => {
    const random = seededRandom(33);
    const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)]!;
    const op = (): TpnsOperator => pick(['AND', 'OR'] as const);
    const count = () => 1 + Math.floor(random() * 3);
    for (let n = 0; n < 500; n++) {
      const rules: TpnsTagRule[] = Array.from({ length: count() }, () => ({
        operator: op(),
        is_not: random() < 0.3,
        tag_items: Array.from({ length: count() }, () => ({
          tags: Array.from({ length: count() }, () => pick(TEST_TAGS)),
          tags_operator: op(),
          items_operator: op(),
          is_not: random() < 0.3,
        })),
      }));
      const expr = fromTagRules(rules);
      for (const { tags, has } of allTagSets()) {
        if (matches(expr, has) !== tpnsReference(rules, has)) {
          expect.fail(`${JSON.stringify(rules)} on ${JSON.stringify(tags)}: ${JSON.stringify(expr)}`);
        }
      }
    }
  });
});

/** TPNS semantics evaluated on booleans, independently of the converter. */
function tpnsReference(rules: TpnsTagRule[], has: (tag: string) => boolean): boolean {
  const chainValue = (values: boolean[], operators: (TpnsOperator | '' | undefined)[]) => {
    // Sum of products: an OR closes the current run of ANDs.
    let result = false;
    let run = values[0]!;
    for (let i = 1; i < values.length; i++) {
      if (operators[i] === 'AND') run = run && values[i]!;
      else {
        result = result || run;
        run = values[i]!;
      }
    }
    return result || run;
  };
  const itemValue = (item: TpnsTagItem) => {
    const values = item.tags.map(has);
    const combined = item.tags_operator === 'AND' ? values.every(Boolean) : values.some(Boolean);
    return item.is_not ? !combined : combined;
  };
  const ruleValue = (rule: TpnsTagRule) => {
    const value = chainValue(
      rule.tag_items.map(itemValue),
      rule.tag_items.map((item) => item.items_operator),
    );
    return rule.is_not ? !value : value;
  };
  return chainValue(
    rules.map(ruleValue),
    rules.map((rule) => rule.operator),
  );
}

describe('fromTagRules tag types', () => {
  it.each([
    ['xg_auto_version', '2.1.0', 'pushd:app_version:2.1.0'],
    ['xg_auto_province', '广东', 'pushd:province:广东'],
    ['xg_auto_city', '深圳', 'pushd:city:深圳'],
    ['xg_auto_active', '30d', 'pushd:active:30d'],
    ['xg_auto_systemversion', '14', 'pushd:os_version:14'],
    ['xg_auto_systemlanguage', 'zh-CN', 'pushd:locale:zh-CN'],
    ['xg_user_define', 'vip', 'vip'],
    ['', 'vip', 'vip'],
    ['', 'pushd:platform:ios', 'pushd:platform:ios'],
    [undefined, 'pushd:platform:android', 'pushd:platform:android'],
  ])('%s %s is %s', (tagType, value, tag) => {
    expect(fromTagRules([{ tag_items: [{ tags: [value], tag_type: tagType }] }])).toEqual(t(tag));
  });

  it.each(['xg_auto_sdkversion', 'xg_auto_devicebrand', 'xg_auto_deviceversion', 'xg_auto_country'])(
    'refuses %s, which pushd does not keep',
    (tagType) => {
      const error = refused(() => fromTagRules([{ tag_items: [{ tags: ['x'], tag_type: tagType }] }]));
      expect(error.metadata.field).toBe('tag_rules[0].tag_items[0].tag_type');
    },
  );

  it('refuses built-in names as xg_user_define tags', () => {
    const error = refused(() =>
      fromTagRules([{ tag_items: [{ tags: ['pushd:platform:ios'], tag_type: 'xg_user_define' }] }]),
    );
    expect(error.metadata.field).toBe('tag_rules[0].tag_items[0].tags[0]');
    expect(error.message).toContain('leave tag_type empty');
  });
});

describe('fromTagRules errors name the TPNS field', () => {
  const valid = (): TpnsTagRule[] => [
    { tag_items: [{ tags: ['a'] }] },
    {
      operator: 'AND',
      tag_items: [{ tags: ['b'] }, { tags: ['c', 'd', 'e'], tags_operator: 'OR', items_operator: 'OR' }],
    },
  ];
  const edit = (change: (rules: Record<string, unknown>[]) => void): unknown => {
    const rules = structuredClone(valid()) as unknown as Record<string, unknown>[];
    change(rules);
    return rules;
  };
  const item = (rules: Record<string, unknown>[], rule: number, index: number) =>
    (rules[rule]!.tag_items as Record<string, unknown>[])[index]!;

  it('accepts the unedited rules', () => {
    expect(fromTagRules(valid())).toEqual(and(t('a'), or(t('b'), t('c'), t('d'), t('e'))));
  });

  it.each<[string, unknown, string]>([
    ['not an array', { tag_items: [] }, 'tag_rules'],
    ['no rules', [], 'tag_rules'],
    ['a rule that is not an object', edit((r) => r.splice(1, 1, 'x' as never)), 'tag_rules[1]'],
    ['no tag items', edit((r) => (r[1]!.tag_items = [])), 'tag_rules[1].tag_items'],
    ['no tags', edit((r) => (item(r, 1, 1).tags = [])), 'tag_rules[1].tag_items[1].tags'],
    [
      'a bad tag',
      edit((r) => ((item(r, 1, 1).tags as string[])[2] = 'has space')),
      'tag_rules[1].tag_items[1].tags[2]',
    ],
    [
      'a tag that is not a string',
      edit((r) => ((item(r, 1, 1).tags as unknown[])[0] = 5)),
      'tag_rules[1].tag_items[1].tags[0]',
    ],
    ['a missing rule operator', edit((r) => delete r[1]!.operator), 'tag_rules[1].operator'],
    ['a lower-case rule operator', edit((r) => (r[1]!.operator = 'and')), 'tag_rules[1].operator'],
    [
      'a missing items_operator',
      edit((r) => delete item(r, 1, 1).items_operator),
      'tag_rules[1].tag_items[1].items_operator',
    ],
    [
      'a missing tags_operator',
      edit((r) => delete item(r, 1, 1).tags_operator),
      'tag_rules[1].tag_items[1].tags_operator',
    ],
    [
      'an is_not that is not a boolean',
      edit((r) => (item(r, 0, 0).is_not = 'true')),
      'tag_rules[0].tag_items[0].is_not',
    ],
    ['a rule is_not that is not a boolean', edit((r) => (r[0]!.is_not = 1)), 'tag_rules[0].is_not'],
    [
      'an unknown tag_type',
      edit((r) => (item(r, 0, 0).tag_type = 'xg_auto_gender')),
      'tag_rules[0].tag_items[0].tag_type',
    ],
  ])('%s', (_name, rules, field) => {
    const error = refused(() => fromTagRules(rules));
    expect(error.code).toBe('INVALID_ARGUMENT');
    expect(error.metadata.field).toBe(field);
    expect(error.message.startsWith(`${field}: `)).toBe(true);
  });

  it('prefixes paths with the field it is given', () => {
    const rules = edit((r) => ((item(r, 1, 1).tags as string[])[2] = 'has space'));
    expect(refused(() => fromTagRules(rules, 'audience.tag_rules')).metadata.field).toBe(
      'audience.tag_rules[1].tag_items[1].tags[2]',
    );
  });

  it(`refuses the ${MAX_EXPRESSION_TAGS + 1}th distinct tag where it appears`, () => {
    const tags = Array.from({ length: MAX_EXPRESSION_TAGS }, (_, i) => `t${i}`);
    expect(() => fromTagRules([{ tag_items: [{ tags, tags_operator: 'OR' }] }])).not.toThrow();
    const error = refused(() =>
      fromTagRules([
        {
          tag_items: [
            { tags, tags_operator: 'OR' },
            { tags: ['t1', 'new'], tags_operator: 'OR', items_operator: 'OR' },
          ],
        },
      ]),
    );
    expect(error.metadata).toEqual({
      field: 'tag_rules[0].tag_items[1].tags[1]',
      limit: String(MAX_EXPRESSION_TAGS),
    });
  });

  it('stops reading a huge input at the node limit', () => {
    const tagItems = Array.from({ length: 100_000 }, () => ({
      tags: ['a', 'b'],
      tags_operator: 'OR',
      items_operator: 'OR',
    }));
    const error = refused(() => fromTagRules([{ tag_items: tagItems }]));
    expect(error.metadata.limit).toBe(String(MAX_EXPRESSION_NODES));
  });
});

describe('fromTagList', () => {
  it.each<[unknown, AudienceExpr]>([
    [{ tags: ['tag1', 'tag2'], op: 'AND' }, and(t('tag1'), t('tag2'))],
    [{ tags: ['tag1', 'tag2'], op: 'OR' }, or(t('tag1'), t('tag2'))],
    [{ tags: ['tag1'] }, t('tag1')],
    [{ tags: ['vip', 'pushd:platform:ios', 'vip'], op: 'AND' }, and(t('vip'), t('pushd:platform:ios'))],
  ])('%j', (list, expected) => {
    expect(fromTagList(list)).toEqual(expected);
  });

  it.each<[unknown, string]>([
    [{ tags: ['a', 'b'] }, 'tag_list.op'],
    [{ tags: ['a', 'b'], op: 'XOR' }, 'tag_list.op'],
    [{ tags: [] }, 'tag_list.tags'],
    [{ tags: ['a', ''], op: 'OR' }, 'tag_list.tags[1]'],
    [['a'], 'tag_list'],
  ])('refuses %j at %s', (list, field) => {
    expect(refused(() => fromTagList(list)).metadata.field).toBe(field);
  });
});

describe('fromTpnsTagFields', () => {
  it('prefers tag_rules over tag_list, as TPNS does', () => {
    expect(
      fromTpnsTagFields({ tag_rules: [{ tag_items: [{ tags: ['a'] }] }], tag_list: { tags: ['b'] } }),
    ).toEqual(t('a'));
    expect(fromTpnsTagFields({ tag_list: { tags: ['b'] } })).toEqual(t('b'));
  });

  it('names its fields under the prefix', () => {
    expect(refused(() => fromTpnsTagFields({}, 'audience.')).metadata.field).toBe('audience.tag_rules');
    expect(refused(() => fromTpnsTagFields({ tag_list: { tags: [' '] } }, 'audience.')).metadata.field).toBe(
      'audience.tag_list.tags[0]',
    );
  });
});

describe('fromProto', () => {
  const json: TpnsTagRule[] = [
    {
      tag_items: [
        { tags: ['guangdong', 'hunan'], tags_operator: 'OR', tag_type: 'xg_auto_province' },
        { tags: ['churned'], is_not: true, items_operator: 'AND', tag_type: 'xg_user_define' },
      ],
    },
    { operator: 'OR', tag_items: [{ tags: ['pushd:platform:ios'] }] },
  ];
  const proto: TagExpression = {
    form: {
      $case: 'tagRules',
      value: {
        rules: json.map((rule) => ({
          operator: rule.operator ?? '',
          isNot: rule.is_not ?? false,
          tagItems: rule.tag_items.map((item) => ({
            tags: item.tags,
            isNot: item.is_not ?? false,
            tagsOperator: item.tags_operator ?? '',
            itemsOperator: item.items_operator ?? '',
            tagType: item.tag_type ?? '',
          })),
        })),
      },
    },
  };

  it('converts tag_rules like the JSON form, also after a trip through the wire format', () => {
    const expected = fromTagRules(json);
    expect(expected).toEqual(
      or(and(or(province('guangdong'), province('hunan')), not(t('churned'))), t('pushd:platform:ios')),
    );
    expect(fromProto(proto)).toEqual(expected);
    expect(fromProto(TagExpression.decode(TagExpression.encode(proto).finish()))).toEqual(expected);
  });

  it('converts tag_list', () => {
    expect(fromProto({ form: { $case: 'tagList', value: { tags: ['a', 'b'], op: 'AND' } } })).toEqual(
      and(t('a'), t('b')),
    );
  });

  it('names proto fields in errors', () => {
    const bad = structuredClone(proto);
    if (bad.form?.$case !== 'tagRules') throw new Error('unreachable');
    bad.form.value.rules[0]!.tagItems[1]!.itemsOperator = '';
    expect(refused(() => fromProto(bad, 'audience.tag_expression')).metadata.field).toBe(
      'audience.tag_expression.tag_rules.rules[0].tag_items[1].items_operator',
    );
    expect(refused(() => fromProto({ form: undefined })).metadata.field).toBe('tag_expression');
    expect(
      refused(() => fromProto({ form: { $case: 'tagList', value: { tags: ['a', 'b'], op: '' } } })).metadata
        .field,
    ).toBe('tag_expression.tag_list.op');
  });
});
