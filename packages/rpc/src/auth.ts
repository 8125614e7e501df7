import type { Metadata } from '@grpc/grpc-js';
import { PushdError, safeEqual } from '@pushd/common';

/**
 * Who is calling, from the `authorization` metadata:
 *   "Bearer <cluster token>"                  an internal caller or operator: may act on any app
 *   "Basic base64(<access_id>:<secret_key>)"  an app's server: may act only on its own app
 */
export type Caller = { kind: 'cluster' } | { kind: 'app'; accessId: number };

export interface CallAuthorizerOptions {
  /** Shared secret of internal callers. */
  clusterToken: string;
  /** Checks an app's secret key; resolves false when the app does not exist or the key is wrong. */
  verifyAppSecret(accessId: number, secretKey: string): Promise<boolean>;
  /** How long a verified app secret is trusted without asking again. Default: 30000 ms. */
  cacheTtlMs?: number;
  /** Clock for the cache. Default: Date.now. */
  now?: () => number;
}

/** Authenticates gRPC calls and enforces tenant isolation: an app can never name another app's id. */
export class CallAuthorizer {
  private readonly verified = new Map<string, number>();
  private readonly cacheTtlMs: number;
  private readonly now: () => number;

  constructor(private readonly options: CallAuthorizerOptions) {
    this.cacheTtlMs = options.cacheTtlMs ?? 30_000;
    this.now = options.now ?? Date.now;
  }

  /** Only the cluster token is accepted (admin and internal methods). */
  async requireCluster(metadata: Metadata): Promise<void> {
    const caller = await this.authenticate(metadata);
    if (caller.kind !== 'cluster') {
      throw new PushdError('PERMISSION_DENIED', 'this method needs the cluster token, not app credentials');
    }
  }

  /**
   * The cluster token, or the credentials of the app `accessId` names. Returns the access id the call acts
   * on (an app caller that leaves access_id at 0 acts on its own app).
   */
  async requireApp(metadata: Metadata, accessId: number): Promise<number> {
    const caller = await this.authenticate(metadata);
    if (caller.kind === 'cluster') {
      if (!accessId) throw new PushdError('INVALID_ARGUMENT', 'access_id: required');
      return accessId;
    }
    if (accessId && accessId !== caller.accessId) {
      throw new PushdError('PERMISSION_DENIED', `app ${caller.accessId} may not act on app ${accessId}`);
    }
    return caller.accessId;
  }

  private async authenticate(metadata: Metadata): Promise<Caller> {
    const header = metadata.get('authorization')[0];
    if (typeof header !== 'string' || header === '') {
      throw new PushdError(
        'UNAUTHENTICATED',
        'missing authorization metadata (Bearer <cluster token> or Basic <app credentials>)',
      );
    }
    const [scheme, value = ''] = header.split(' ', 2);
    if (scheme?.toLowerCase() === 'bearer') {
      if (safeEqual(value, this.options.clusterToken)) return { kind: 'cluster' };
      throw new PushdError('UNAUTHENTICATED', 'the bearer token is not the cluster token');
    }
    if (scheme?.toLowerCase() === 'basic') {
      const decoded = Buffer.from(value, 'base64').toString('utf8');
      const separator = decoded.indexOf(':');
      const accessId = Number(decoded.slice(0, separator));
      const secret = decoded.slice(separator + 1);
      if (separator <= 0 || !Number.isSafeInteger(accessId) || accessId <= 0 || secret === '') {
        throw new PushdError(
          'UNAUTHENTICATED',
          'basic credentials must be base64("<access_id>:<secret_key>")',
        );
      }
      const cacheKey = `${accessId}:${secret}`;
      const until = this.verified.get(cacheKey);
      if (until !== undefined && until > this.now()) return { kind: 'app', accessId };
      if (!(await this.options.verifyAppSecret(accessId, secret))) {
        this.verified.delete(cacheKey);
        throw new PushdError('UNAUTHENTICATED', `wrong secret key for app ${accessId}, or no such app`);
      }
      if (this.verified.size > 10_000) this.verified.clear();
      this.verified.set(cacheKey, this.now() + this.cacheTtlMs);
      return { kind: 'app', accessId };
    }
    throw new PushdError('UNAUTHENTICATED', `unsupported authorization scheme ${JSON.stringify(scheme)}`);
  }
}

/** The `authorization` value for app credentials. */
export function basicAuthorization(accessId: number, secretKey: string): string {
  return `Basic ${Buffer.from(`${accessId}:${secretKey}`).toString('base64')}`;
}

/** The `authorization` value for the cluster token. */
export function bearerAuthorization(clusterToken: string): string {
  return `Bearer ${clusterToken}`;
}

/** Minimal registry client shape needed to check app secrets (a PromiseClient of RegistryService fits). */
export interface AppSecretVerifier {
  verifyApp(request: {
    accessId: number;
    key: { $case: 'accessKey'; value: string } | { $case: 'secretKey'; value: string } | undefined;
  }): Promise<unknown>;
}

/**
 * `verifyAppSecret` for services other than the registry: asks the registry (CallAuthorizer caches the
 * answer). Wrong key or unknown app is `false`; an unreachable registry is an error (UNAVAILABLE), not a
 * refusal, so that an outage never looks like bad credentials.
 */
export function verifyAppSecretWithRegistry(registry: AppSecretVerifier) {
  return async (accessId: number, secretKey: string): Promise<boolean> => {
    try {
      await registry.verifyApp({ accessId, key: { $case: 'secretKey', value: secretKey } });
      return true;
    } catch (error) {
      if (error instanceof PushdError && (error.code === 'UNAUTHENTICATED' || error.code === 'APP_NOT_FOUND'))
        return false;
      throw error;
    }
  };
}
