// A push-load process: calls dispatch's Push with an app's credentials, open loop at a fixed rate (each
// push goes out when it is due, whatever the responses do) or once to each of its tokens.
import { PushdError } from '@pushd/common';
import { DispatchServiceService, MessageType, Platform } from '@pushd/proto';
import { basicAuthorization, createRpcClient, type PromiseClient } from '@pushd/rpc';
import { serveCalls } from './children.js';

export interface PusherInit {
  dispatch: string;
  accessId: number;
  secretKey: string;
  /** The devices this pusher targets, round robin (pushers get disjoint slices). */
  tokens: string[];
  /** Deadline of one Push call. */
  deadlineMs: number;
}

export interface RateArgs {
  /** Pushes per second. */
  rate: number;
  durationMs: number;
  /** Calls in flight beyond which the pusher stops sending (the system is far behind): saturated. */
  maxInflight: number;
}

export interface RateResult {
  /** Pushes due in the duration. */
  due: number;
  sent: number;
  /** msg_id of every accepted push. */
  accepted: Float64Array;
  /** Index (in this pusher's tokens) of the device of each accepted push. */
  acceptedTokens: Float64Array;
  errors: Record<string, number>;
  /** Push call durations of accepted pushes, ms. */
  apiMs: Float64Array;
  /** Latest a push went out after it was due, ms (the pusher itself falling behind). */
  maxLagMs: number;
  saturated: boolean;
  /** Time from the first push to the last response, ms. */
  elapsedMs: number;
  /** CPU this process used over the step, in cores. */
  cpu: number;
}

export interface EachResult {
  accepted: number;
  errors: Record<string, number>;
  elapsedMs: number;
}

let dispatch: PromiseClient<typeof DispatchServiceService> | undefined;
let init: PusherInit | undefined;
let cursor = 0;

function request(accessId: number, token: string, sentAt: number) {
  return {
    accessId,
    audience: { target: { $case: 'token' as const, value: token } },
    message: {
      type: MessageType.MESSAGE_TYPE_NOTIFY,
      title: 'bench',
      content: 'a benchmark notification',
      customContent: { t: sentAt.toFixed(3) },
    },
    platform: Platform.PLATFORM_UNSPECIFIED,
  };
}

function setup(args: PusherInit): void {
  init = args;
  dispatch = createRpcClient(DispatchServiceService, {
    address: args.dispatch,
    authorization: basicAuthorization(args.accessId, args.secretKey),
    deadlineMs: args.deadlineMs,
  });
}

function ready(): { client: PromiseClient<typeof DispatchServiceService>; config: PusherInit } {
  if (dispatch === undefined || init === undefined) throw new Error('init first');
  return { client: dispatch, config: init };
}

function codeOf(error: unknown): string {
  return error instanceof PushdError ? error.code : 'UNKNOWN';
}

function rate(args: RateArgs): Promise<RateResult> {
  const { client, config } = ready();
  const due = Math.round((args.rate * args.durationMs) / 1000);
  const accepted: number[] = [];
  const acceptedTokens: number[] = [];
  const apiMs: number[] = [];
  const errors: Record<string, number> = {};
  let sent = 0;
  let inflight = 0;
  let maxLagMs = 0;
  let saturated = false;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  return new Promise<RateResult>((resolve) => {
    const finish = () => {
      const elapsedMs = performance.now() - started;
      const cpu = process.cpuUsage(cpuBefore);
      resolve({
        due,
        sent,
        accepted: Float64Array.from(accepted),
        acceptedTokens: Float64Array.from(acceptedTokens),
        errors,
        apiMs: Float64Array.from(apiMs),
        maxLagMs,
        saturated,
        elapsedMs,
        cpu: (cpu.user + cpu.system) / 1000 / elapsedMs,
      });
    };
    const fire = () => {
      const tokenIndex = cursor++ % config.tokens.length;
      const token = config.tokens[tokenIndex]!;
      const t0 = performance.now();
      inflight++;
      sent++;
      client
        .push(request(config.accessId, token, performance.timeOrigin + t0))
        .then(
          (response) => {
            accepted.push(response.msgId);
            acceptedTokens.push(tokenIndex);
            apiMs.push(performance.now() - t0);
          },
          (error: unknown) => {
            const code = codeOf(error);
            errors[code] = (errors[code] ?? 0) + 1;
          },
        )
        .finally(() => {
          inflight--;
          if (inflight === 0 && (sent >= due || saturated)) finish();
        });
    };
    const tick = () => {
      const elapsed = performance.now() - started;
      const dueNow = Math.min(due, Math.floor((args.rate * elapsed) / 1000));
      if (dueNow > sent) maxLagMs = Math.max(maxLagMs, elapsed - (sent * 1000) / args.rate);
      while (sent < dueNow) {
        if (inflight >= args.maxInflight) {
          saturated = true;
          break;
        }
        fire();
      }
      if (sent < due && !saturated) setTimeout(tick, 1);
      else if (inflight === 0) finish();
    };
    tick();
  });
}

async function each(args: { concurrency: number }): Promise<EachResult> {
  const { client, config } = ready();
  const errors: Record<string, number> = {};
  let accepted = 0;
  let next = 0;
  const started = performance.now();
  const lane = async () => {
    while (next < config.tokens.length) {
      const token = config.tokens[next++]!;
      try {
        await client.push(request(config.accessId, token, performance.timeOrigin + performance.now()));
        accepted++;
      } catch (error) {
        const code = codeOf(error);
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, args.concurrency) }, lane));
  return { accepted, errors, elapsedMs: performance.now() - started };
}

/**
 * Closed loop for `durationMs`: `concurrency` calls always in flight, each lane sending its next push when
 * the previous one returned. Measures what the system accepts at most, whatever the latency.
 */
async function closed(args: { durationMs: number; concurrency: number }): Promise<RateResult> {
  const { client, config } = ready();
  const accepted: number[] = [];
  const acceptedTokens: number[] = [];
  const apiMs: number[] = [];
  const errors: Record<string, number> = {};
  let sent = 0;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const lane = async () => {
    while (performance.now() - started < args.durationMs) {
      const tokenIndex = cursor++ % config.tokens.length;
      const t0 = performance.now();
      sent++;
      try {
        const response = await client.push(
          request(config.accessId, config.tokens[tokenIndex]!, performance.timeOrigin + t0),
        );
        accepted.push(response.msgId);
        acceptedTokens.push(tokenIndex);
        apiMs.push(performance.now() - t0);
      } catch (error) {
        const code = codeOf(error);
        errors[code] = (errors[code] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, args.concurrency) }, lane));
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  return {
    due: sent,
    sent,
    accepted: Float64Array.from(accepted),
    acceptedTokens: Float64Array.from(acceptedTokens),
    errors,
    apiMs: Float64Array.from(apiMs),
    maxLagMs: 0,
    saturated: false,
    elapsedMs,
    cpu: (cpu.user + cpu.system) / 1000 / elapsedMs,
  };
}

serveCalls({ init: setup, rate, each, closed });
