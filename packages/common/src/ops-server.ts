import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';

/** A readiness check: resolves when the dependency is usable, throws (with a reason) when not. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<void> | void;
}

export interface OpsServerOptions {
  /** Interface to bind. Default: '0.0.0.0'. */
  host?: string;
  /** Port to bind; 0 picks a free one (see `port` after start). */
  port: number;
  /** Metrics served on /metrics. */
  registry: Registry;
  /** Checks behind /readyz. Default: none (ready once started). */
  checks?: ReadinessCheck[];
  logger: Logger;
}

/**
 * The operations endpoint every service exposes: `/metrics` (Prometheus text format), `/healthz` (the
 * process is alive) and `/readyz` (its dependencies answer; 503 with the failing checks otherwise).
 */
export class OpsServer {
  private readonly server: Server;
  private boundPort = 0;

  constructor(private readonly options: OpsServerOptions) {
    this.server = createServer((request, response) => {
      void this.handle(request.url ?? '/', request.method ?? 'GET').then(({ status, type, body }) => {
        response.writeHead(status, { 'content-type': type });
        response.end(body);
      });
    });
  }

  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host ?? '0.0.0.0', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.boundPort = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(url: string, method: string): Promise<{ status: number; type: string; body: string }> {
    const path = url.split('?')[0];
    if (method !== 'GET' && method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/metrics') {
      try {
        return {
          status: 200,
          type: this.options.registry.contentType,
          body: await this.options.registry.metrics(),
        };
      } catch (error) {
        this.options.logger.error({ err: error }, 'collecting metrics failed');
        return text(500, 'collecting metrics failed\n');
      }
    }
    if (path === '/readyz') {
      const failures: string[] = [];
      for (const { name, check } of this.options.checks ?? []) {
        try {
          await check();
        } catch (error) {
          failures.push(`${name}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
      return failures.length === 0 ? text(200, 'ready\n') : text(503, `not ready\n${failures.join('\n')}\n`);
    }
    return text(404, 'not found: try /metrics, /healthz or /readyz\n');
  }
}

function text(status: number, body: string): { status: number; type: string; body: string } {
  return { status, type: 'text/plain; charset=utf-8', body };
}
