import { PushdError } from '@pushd/common';
import { describe, expect, it } from 'vitest';
import { decodeClientFrame } from './device-codec.js';

const decodeJson = (text: string) => decodeClientFrame(new TextEncoder().encode(text), false, 'json');

function refusal(text: string): PushdError {
  try {
    decodeJson(text);
  } catch (error) {
    if (error instanceof PushdError) return error;
    throw error;
  }
  throw new Error(`expected ${text} to be refused`);
}

describe('decodeClientFrame (JSON)', () => {
  it('takes msg ids as JSON integers or decimal strings, under either field name', () => {
    expect(decodeJson('{"ack":{"msgIds":[41,"42"]}}').body).toEqual({
      $case: 'ack',
      value: { msgIds: [41, 42] },
    });
    expect(decodeJson('{"ack":{"msg_ids":["7"]}}').body).toEqual({ $case: 'ack', value: { msgIds: [7] } });
    expect(decodeJson('{"click":{"msgId":"9"}}').body).toMatchObject({ $case: 'click', value: { msgId: 9 } });
    expect(decodeJson('{"ack":{}}').body).toEqual({ $case: 'ack', value: { msgIds: [] } });
    expect(decodeJson('{"ack":{"msgIds":null}}').body).toEqual({ $case: 'ack', value: { msgIds: [] } });
  });

  it.each([
    ['a boolean among the ids', '{"ack":{"msgIds":[41,true]}}', 'ack.msgIds'],
    ['an array among the ids', '{"ack":{"msgIds":[[7]]}}', 'ack.msgIds'],
    ['a word among the ids', '{"ack":{"msgIds":["abc"]}}', 'ack.msgIds'],
    ['a fraction among the ids', '{"ack":{"msg_ids":[1.5]}}', 'ack.msg_ids'],
    ['a hexadecimal string among the ids', '{"ack":{"msgIds":["0x10"]}}', 'ack.msgIds'],
    ['ids that are no list', '{"ack":{"msgIds":"abc"}}', 'ack.msgIds'],
    ['a click of a boolean id', '{"click":{"msgId":true}}', 'click.msgId'],
    ['a click of a negative id', '{"click":{"msg_id":-3}}', 'click.msg_id'],
  ])('refuses %s as FRAME_MALFORMED, naming the field', (_what, text, field) => {
    const error = refusal(text);
    expect(error.code).toBe('FRAME_MALFORMED');
    expect(error.message).toContain(`"${field}"`);
  });
});
