// Hybrid logical clock: wall-clock milliseconds plus a counter, so causally later writes always carry a
// higher clock even when wall clocks disagree or stand still. Pure: the caller passes `now`.

export type Hlc = { readonly wall: number; readonly counter: number }

/** A remote clock further ahead of our `now` than this is refused: one bad clock must not drag us all. */
export const MAX_DRIFT_MS = 60_000
// Fixed widths make the string encoding sort like the clock: 12 hex digits of ms last until year 10889.
const WALL_HEX = 12
const COUNTER_HEX = 6
export const MAX_COUNTER = 16 ** COUNTER_HEX - 1
export const MAX_WALL = 16 ** WALL_HEX - 1

export const ZERO_HLC: Hlc = { wall: 0, counter: 0 }

export type ReceiveResult = { ok: true; hlc: Hlc } | { ok: false; reason: 'clock-drift'; aheadMs: number }

// A counter that would overflow borrows one millisecond instead: the clock stays monotonic either way.
function make(wall: number, counter: number): Hlc {
  return counter > MAX_COUNTER ? { wall: wall + 1, counter: 0 } : { wall, counter }
}

/** The clock for a local event (a write) at wall time `now`. */
export function tick(local: Hlc, now: number): Hlc {
  const wall = Math.max(local.wall, Math.floor(now))
  return wall === local.wall ? make(wall, local.counter + 1) : { wall, counter: 0 }
}

/** The clock after seeing a remote clock; refuses (does not throw) one too far ahead of `now`. */
export function receive(local: Hlc, remote: Hlc, now: number, maxDriftMs = MAX_DRIFT_MS): ReceiveResult {
  const phys = Math.floor(now)
  if (remote.wall > phys + maxDriftMs)
    return { ok: false, reason: 'clock-drift', aheadMs: remote.wall - phys }
  const wall = Math.max(local.wall, remote.wall, phys)
  let counter = 0
  if (wall === local.wall && wall === remote.wall) counter = Math.max(local.counter, remote.counter) + 1
  else if (wall === local.wall) counter = local.counter + 1
  else if (wall === remote.wall) counter = remote.counter + 1
  return { ok: true, hlc: make(wall, counter) }
}

export function compareHlc(a: Hlc, b: Hlc): number {
  if (a.wall !== b.wall) return a.wall < b.wall ? -1 : 1
  if (a.counter !== b.counter) return a.counter < b.counter ? -1 : 1
  return 0
}

export function isValidHlc(h: Hlc): boolean {
  return (
    Number.isSafeInteger(h.wall) &&
    h.wall >= 0 &&
    h.wall <= MAX_WALL &&
    Number.isSafeInteger(h.counter) &&
    h.counter >= 0 &&
    h.counter <= MAX_COUNTER
  )
}

const HLC_PATTERN = /^[0-9a-f]{12}\.[0-9a-f]{6}$/

/** 'wwwwwwwwwwww.cccccc' in lower-case hex; lexicographic order equals clock order. */
export function encodeHlc(h: Hlc): string {
  return `${h.wall.toString(16).padStart(WALL_HEX, '0')}.${h.counter.toString(16).padStart(COUNTER_HEX, '0')}`
}

export function decodeHlc(s: string): Hlc | undefined {
  if (!HLC_PATTERN.test(s)) return undefined
  return {
    wall: Number.parseInt(s.slice(0, WALL_HEX), 16),
    counter: Number.parseInt(s.slice(WALL_HEX + 1), 16),
  }
}
