import type { Logger } from '@pushd/common';

/**
 * Logs failures that can repeat once per message (a throwing handler, a failing ack) without flooding:
 * the first one is logged at once, later ones at most once per `intervalMs` with how many were skipped.
 */
export class ErrorReporter {
  private lastLoggedAt = Number.NEGATIVE_INFINITY;
  private suppressed = 0;

  constructor(
    private readonly logger: Logger,
    private readonly component: string,
    private readonly intervalMs = 10_000,
  ) {}

  report(error: unknown, context: Record<string, unknown>, message: string): void {
    const now = performance.now();
    if (now - this.lastLoggedAt < this.intervalMs) {
      this.suppressed++;
      return;
    }
    this.lastLoggedAt = now;
    const suppressed = this.suppressed;
    this.suppressed = 0;
    this.logger.error({ err: error, component: this.component, ...context, suppressed }, message);
  }
}
