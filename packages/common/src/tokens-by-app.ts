/**
 * The distinct tokens of each app among `devices`, apps and tokens in first-seen order: what a batch of
 * device, route or credential lookups reads, one many-key read per app (an app's keys are read together,
 * different apps' apart).
 */
export function tokensByApp(devices: Iterable<{ accessId: number; token: string }>): Map<number, string[]> {
  const sets = new Map<number, Set<string>>();
  for (const { accessId, token } of devices) {
    const tokens = sets.get(accessId);
    if (tokens === undefined) sets.set(accessId, new Set([token]));
    else tokens.add(token);
  }
  return new Map([...sets].map(([accessId, tokens]) => [accessId, [...tokens]]));
}
