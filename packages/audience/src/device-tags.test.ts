import { Platform } from '@pushd/proto';
import { describe, expect, it } from 'vitest';
import { deviceTagTest } from './device-tags.js';

const attributes = {
  platform: Platform.PLATFORM_ANDROID,
  appVersion: '2.1.0',
  osVersion: '14',
  locale: 'zh-CN',
};

describe('deviceTagTest', () => {
  it('holds the built-in tags of the attributes and the activity windows of a connected device', () => {
    const has = deviceTagTest(attributes, []);
    for (const tag of [
      'pushd:platform:android',
      'pushd:app_version:2.1.0',
      'pushd:os_version:14',
      'pushd:locale:zh-CN',
      'pushd:active:1d',
      'pushd:active:30d',
    ]) {
      expect(has(tag), tag).toBe(true);
    }
    expect(has('pushd:platform:ios')).toBe(false);
    expect(has('vip')).toBe(false);
  });

  it('holds the user tags of the set', () => {
    const has = deviceTagTest(attributes, ['vip', 'sports']);
    expect(has('vip')).toBe(true);
    expect(has('sports')).toBe(true);
    expect(has('news')).toBe(false);
    expect(has('pushd:platform:android')).toBe(true);
  });

  it('holds the built-in tags the tag store keeps in the set (the reported location)', () => {
    const has = deviceTagTest(attributes, ['vip', 'pushd:province:广东', 'pushd:city:深圳']);
    expect(has('pushd:province:广东')).toBe(true);
    expect(has('pushd:city:深圳')).toBe(true);
    expect(has('pushd:city:广州')).toBe(false);
    expect(has('pushd:app_version:2.1.0')).toBe(true);
    // Only location tags in the set: still found.
    expect(deviceTagTest(attributes, ['pushd:city:深圳'])('pushd:city:深圳')).toBe(true);
  });

  it('takes a location given as attributes too', () => {
    const has = deviceTagTest({ ...attributes, province: '广东', city: '深圳' }, ['vip']);
    expect(has('pushd:province:广东')).toBe(true);
    expect(has('pushd:city:深圳')).toBe(true);
  });
});
