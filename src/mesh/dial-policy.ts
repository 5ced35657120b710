// Pure rules of the stay-connected loop. One side of each pair dials (the smaller peer id) so a pair
// normally holds one connection; the other side dials too once it has waited a grace period, so a pair
// still connects when the smaller side cannot reach the larger one.

export interface DialPolicy {
  /** Wait before the larger peer id dials too. */
  graceMs: number
  baseBackoffMs: number
  maxBackoffMs: number
}

// The back-off stays short: on a LAN a failed dial is cheap, and after a split heals every second counts.
export const DEFAULT_DIAL_POLICY: DialPolicy = { graceMs: 500, baseBackoffMs: 250, maxBackoffMs: 3_000 }

export function shouldDial(self: string, peer: string, waitedMs: number, policy: DialPolicy): boolean {
  return self < peer || waitedMs >= policy.graceMs
}

export function backoffMs(failures: number, policy: DialPolicy): number {
  if (failures <= 0) return 0
  return Math.min(policy.maxBackoffMs, policy.baseBackoffMs * 2 ** Math.min(failures - 1, 20))
}

/** Of several connections to one peer, keep the one the smaller peer id dialed; both sides agree. */
export function connectionToKeep<C extends { direction: 'inbound' | 'outbound' }>(
  self: string,
  peer: string,
  conns: C[],
): C | undefined {
  const wanted = self < peer ? 'outbound' : 'inbound'
  return conns.find((c) => c.direction === wanted) ?? conns[0]
}

const HANDSHAKE_ERRORS = new Set([
  'EncryptionFailedError',
  'InvalidCryptoExchangeError',
  'UnexpectedEOFError',
  'InvalidMessageError',
  'UnsupportedProtocolError',
  'MuxerUnavailableError',
  'ProtocolError',
])

/**
 * Whether a dial failed after the peer answered (TCP connected, then the encrypted handshake broke):
 * with a private network that almost always means the peer holds another cluster's key.
 */
export function isHandshakeFailure(err: unknown): boolean {
  const seen = new Set<unknown>()
  let cur: unknown = err
  while (cur instanceof Error && !seen.has(cur)) {
    seen.add(cur)
    if (HANDSHAKE_ERRORS.has(cur.name)) return true
    const errors = (cur as { errors?: unknown[] }).errors
    if (Array.isArray(errors) && errors.some((e) => isHandshakeFailure(e))) return true
    cur = (cur as { cause?: unknown }).cause
  }
  return false
}
