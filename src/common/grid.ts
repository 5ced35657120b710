// Periodic work on a shared wall-clock grid. Each periodic timer of an idle agent (heartbeats, the
// scheduler's pass, the mesh's loop, …) used to wake the process at its own phase, and each peer's heartbeat
// arrived at that peer's phase: in a 10-node lab an agent woke ~20 times a second, each time with cold
// caches. On the grid every timer of a period fires at whole multiples of it (`Date.now() % period === 0`),
// so one agent's timers share wake-ups, and nodes whose clocks agree (NTP on the LAN) send their heartbeats
// together, so each agent takes its peers' heartbeats in one wake-up too. Idle CPU of a 10-node lab's median
// agent: 1.27–1.33 % → 1.00 % with the heartbeat alone on the grid, 0.73–0.83 % with every periodic timer
// (docs/benchmarks.md, mesh). Nodes whose clocks differ lose the second part only.

/** The first grid point after `now`: the next whole multiple of `periodMs` (pure, for tests). */
export function nextGridPoint(now: number, periodMs: number): number {
  return now - (now % periodMs) + periodMs
}

/**
 * The grid point a timer waits for after the tick for `due` ran at `now`: the next one, or if the tick ran
 * late the first one still ahead (no burst of missed ticks); a tick that ran a little early does not make
 * the same point due again (pure, for tests).
 */
export function nextDue(due: number, now: number, periodMs: number): number {
  return Math.max(due + periodMs, nextGridPoint(now, periodMs))
}

export interface GridTimer {
  stop(): void
}

/** Calls `fn` at every grid point of `periodMs` (see `nextDue`) until stopped; never keeps the process alive. */
export function onGrid(periodMs: number, fn: () => void): GridTimer {
  let due = nextGridPoint(Date.now(), periodMs)
  let timer: NodeJS.Timeout | undefined
  let stopped = false
  const arm = () => {
    timer = setTimeout(run, Math.max(0, due - Date.now()))
    timer.unref()
  }
  const run = () => {
    if (stopped) return
    due = nextDue(due, Date.now(), periodMs)
    arm()
    fn()
  }
  arm()
  return {
    stop() {
      stopped = true
      clearTimeout(timer)
    },
  }
}
