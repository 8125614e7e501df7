import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/**
 * Where freePort hands out ports: from 20000 up to just below the kernel's ephemeral range
 * (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default). A port the OS picks for listen(0)
 * comes from the ephemeral range, so the OS may also give it to an outgoing connection (a service's
 * connection to NATS, Redis or another service) between the moment the test picked it and the moment the
 * service meant to listen on it starts, which then fails with EADDRINUSE; that failed a CI run. The OS
 * never hands out a port below the range by itself.
 */
const FIRST_PORT = 20_000;
/** Vitest workers (VITEST_POOL_ID) get slices of their own, so that parallel test files never collide. */
const SLICES = 12;

interface PortSlice {
  first: number;
  size: number;
  next: number;
}

let slice: PortSlice | null | undefined;

/** This process's slice, or null where the ephemeral range leaves too little room below it. */
function portSlice(): PortSlice | null {
  if (slice !== undefined) return slice;
  let ephemeralStart = 32_768;
  try {
    const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    if (Number.isSafeInteger(Number(low))) ephemeralStart = Number(low);
  } catch {
    // Not Linux: keep the default range's start.
  }
  const size = Math.floor((ephemeralStart - FIRST_PORT) / SLICES);
  if (size < 100) {
    slice = null;
    return slice;
  }
  const pool = Number(process.env.VITEST_POOL_ID ?? 0);
  const first = FIRST_PORT + ((Number.isSafeInteger(pool) ? pool : 0) % SLICES) * size;
  // A random start: consecutive runs do not reuse the ports the last one just released.
  slice = { first, size, next: Math.floor(Math.random() * size) };
  return slice;
}

/**
 * Listens on 127.0.0.1:port (0: a port the OS picks) and closes again: the port that was bound, or
 * undefined when it could not be (something else holds it).
 */
function probe(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(address && typeof address === 'object' ? address.port : undefined));
    });
  });
}

/**
 * A TCP port that was free a moment ago on 127.0.0.1, below the kernel's ephemeral range (see FIRST_PORT),
 * each call the next free one of this process's slice. Where there is no room below the range, one the OS
 * picks.
 */
export async function freePort(): Promise<number> {
  const own = portSlice();
  if (own !== null) {
    for (let tries = 0; tries < own.size; tries++) {
      const port = await probe(own.first + (own.next++ % own.size));
      if (port !== undefined) return port;
    }
  }
  const picked = await probe(0);
  if (picked === undefined) throw new Error('could not listen on 127.0.0.1 to find a free port');
  return picked;
}

/** Resolves once something accepts TCP connections on host:port, or rejects after timeoutMs. */
export async function waitForPort(port: number, host = '127.0.0.1', timeoutMs = 15_000): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ port, host });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Polls `probe` until it returns a truthy value (returned) or throws after timeoutMs with `what`. */
export async function waitFor<T>(probe: () => T | Promise<T>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const reason = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${reason}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}
