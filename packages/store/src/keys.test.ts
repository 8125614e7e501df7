import { describe, expect, it } from 'vitest';
import { encodePart, RedisKeys } from './keys.js';

/** The hash tag Redis Cluster hashes: the part between the first '{' and the next '}'. */
function hashTag(key: string): string {
  const open = key.indexOf('{');
  const close = key.indexOf('}', open + 1);
  return key.slice(open + 1, close);
}

describe('RedisKeys', () => {
  const keys = new RedisKeys();
  const token = '0123456789abcdef0123456789abcdef01234567';

  it('puts every key of one entity under one hash tag', () => {
    const device = [
      keys.device(1, token),
      keys.inbox(1, token),
      keys.inboxLast(1, token),
      keys.inboxMeta(1, token),
      keys.route(1, token),
      keys.tags(1, token),
      keys.tagMeta(1, token),
    ];
    expect(new Set(device.map(hashTag))).toEqual(new Set([`d:1:${token}`]));
    const app = [
      keys.app(1),
      keys.deviceCounts(1),
      keys.idSeq(1),
      keys.tagCounts(1),
      keys.audienceRegistered(1),
      keys.audiencePlatform(1, 2),
      keys.audienceTag(1, 'a}{b:c'),
      keys.audienceOnline(1),
      keys.audienceDay(1, 20_000),
      keys.audienceTemp(1, 'ab12', 3),
      keys.broadcastLog(1),
      keys.broadcastExpiry(1),
      keys.broadcastHead(1),
      keys.broadcastGate(1),
      keys.pushIndex(1),
      keys.pushRetention(1),
      keys.idempotency(1, 'k}{:1'),
      keys.statsDay(1, 20_000),
      keys.statsDayCarried(1, 20_000),
    ];
    expect(new Set(app.map(hashTag))).toEqual(new Set(['a:1']));
    const push = [
      keys.push(1, '9'),
      keys.pushCounts(1, '9'),
      keys.pushSent(1, '9', 1024),
      keys.pushArrived(1, '9', 1024),
      keys.pushClicked(1, '9', 2048),
    ];
    expect(new Set(push.map(hashTag))).toEqual(new Set(['p:1:9']));
    expect(new Set([keys.scheduleDue(7), keys.scheduleByPush(7)].map(hashTag))).toEqual(new Set(['s:7']));
    expect(hashTag(keys.scheduleDue(8))).toBe('s:8');
    expect(keys.device(1, token)).toBe(`pushd:{d:1:${token}}:dev`);
    expect(keys.audienceTag(1, 'vip')).toBe('pushd:{a:1}:aud:t:vip');
    expect(keys.broadcastLog(1)).toBe('pushd:{a:1}:bcast');
    expect(keys.idempotency(1, 'req-1')).toBe('pushd:{a:1}:idem:req-1');
    expect(keys.idempotency(1, 'a:b')).not.toBe(keys.idempotency(1, 'a_b'));
    expect(new Set(app).size).toBe(app.length);
    expect(keys.audienceTag(1, 'pushd:locale:zh-CN')).not.toBe(keys.audienceTag(1, 'pushd_locale_zh-CN'));
    expect(keys.accountTokens(1, 'alice')).toBe('pushd:{c:1:alice}:tokens');
  });

  it('encodes user strings so they cannot break the tag or the layout', () => {
    for (const account of ['a}b', '{a}', 'a:b', '', '用户', '~x']) {
      const key = keys.accountTokens(1, account);
      expect(key.slice(key.indexOf('}') + 1)).toBe(':tokens');
      expect(hashTag(key).split(':')).toHaveLength(3);
    }
    expect(encodePart('a:b')).not.toBe(encodePart('a_b'));
    expect(encodePart('')).toBe('~');
    expect(encodePart('~')).not.toBe('~');
    expect(new Set(['a', '~YQ', 'a:', 'a}'].map(encodePart)).size).toBe(4);
  });

  it('takes a prefix and refuses one that would become the hash tag', () => {
    expect(new RedisKeys({ prefix: 'test' }).app(5)).toBe('test:{a:5}:app');
    expect(() => new RedisKeys({ prefix: 'x{y}' })).toThrow(/prefix/);
    expect(() => new RedisKeys({ prefix: '' })).toThrow(/prefix/);
  });

  it('refuses access ids that are not integers', () => {
    expect(() => keys.app(1.5)).toThrow();
    expect(() => keys.app(-1)).toThrow();
  });
});
