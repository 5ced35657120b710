// The failure detector, as pure functions of "when did we last hear from this node".

export type MemberState = 'alive' | 'suspect' | 'dead'

export interface DetectorConfig {
  heartbeatMs: number
  suspectMs: number
  deadMs: number
}

export const DEFAULT_DETECTOR: DetectorConfig = { heartbeatMs: 1_000, suspectMs: 3_000, deadMs: 5_000 }

export function memberState(now: number, lastHeard: number, cfg: DetectorConfig): MemberState {
  const silence = now - lastHeard
  if (silence >= cfg.deadMs) return 'dead'
  if (silence >= cfg.suspectMs) return 'suspect'
  return 'alive'
}

/**
 * When the last connection to a peer closes we stop waiting for its heartbeats to run out: it becomes
 * suspect at once (libp2p connection events speed the detector up), and dead on the usual schedule.
 */
export function lastHeardAfterDisconnect(now: number, lastHeard: number, cfg: DetectorConfig): number {
  return Math.min(lastHeard, now - cfg.suspectMs)
}
