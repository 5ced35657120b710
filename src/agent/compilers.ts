// V8's optimizing compilers: off while the agent is idle, on for good once it is busy (docs/agent.md,
// "Memory").
//
// bin/km1s starts the agent with --no-maglev --no-turbofan. An idle agent then runs its JavaScript in V8's
// interpreter and never touches the compilers' ~7.5 MiB of the node binary nor keeps optimized code: in a
// 10-node lab its RSS is ~12 MiB lower for ~0.1–0.3 % of a core more, and its start is no slower
// (docs/benchmarks.md). Work that is hot for long — a DNS flood — needs the compilers: without them the DNS
// server answered ~0.65× what dnsmasq does instead of ~0.9×. So once the agent has used more than half a
// core for three seconds in a row, this turns both compilers on through `v8.setFlagsFromString`: V8 reads
// them at each tier-up decision, so the hot functions are optimized within moments. They stay on: the
// code they made cannot be given back cheaply, and a node that was busy once is likely to be again.
// Chrome makes the same trade on low-memory phones (V8's lite mode). Sampling begins once the agent is ready
// (run.ts): loading and opening everything is one burst that the interpreter does for the same CPU.
import { setFlagsFromString } from 'node:v8'
import { type GridTimer, onGrid } from '../common/grid.ts'
import type { Logger } from '../common/logger.ts'

export interface BusyRule {
  /** How many consecutive one-second samples must be busy. */
  samples: number
  /** The share of one core (0–1) a busy sample reaches. */
  share: number
}

export const DEFAULT_BUSY_RULE: BusyRule = { samples: 3, share: 0.5 }

/** V8 flags that cannot be combined with turning a compiler on later. */
const NO_JIT = new Set(['--jitless', '--lite-mode'])

/**
 * The flags that turn on the optimizing compilers the process was started without (`--no-maglev`,
 * `--no-turbofan` or its alias `--no-opt`), in `execArgv`'s own terms; none when none was turned off or
 * when the process runs without a JIT at all (`--jitless`, `--lite-mode`).
 */
export function compilersToTurnOn(execArgv: readonly string[]): string[] {
  if (execArgv.some((a) => NO_JIT.has(a))) return []
  const on: string[] = []
  if (execArgv.includes('--no-maglev')) on.push('--maglev')
  if (execArgv.includes('--no-turbofan') || execArgv.includes('--no-opt')) on.push('--turbofan')
  return on
}

/** Whether the newest `rule.samples` shares of a core (oldest first) are all busy. */
export function isBusy(shares: readonly number[], rule: BusyRule): boolean {
  if (shares.length < rule.samples) return false
  return shares.slice(-rule.samples).every((s) => s >= rule.share)
}

export interface CompilerGovernorInit {
  execArgv: readonly string[]
  logger: Logger
  rule?: BusyRule
  /** CPU time used by this process so far, in µs (`process.cpuUsage()`'s user + system). */
  cpuMicros?: () => number
  /** A monotonic clock in ms. */
  now?: () => number
  setFlags?: (flags: string) => void
  /** ms between samples; 0 leaves sampling to the caller (`sample()`), as tests do. */
  intervalMs?: number
}

/** Samples the process's CPU share once a second and turns the optimizing compilers on when it is busy. */
export class CompilerGovernor {
  readonly #init: CompilerGovernorInit
  readonly #rule: BusyRule
  readonly #flags: string[]
  readonly #cpu: () => number
  readonly #now: () => number
  #timer: GridTimer | undefined
  #last: { at: number; cpu: number } | undefined
  #shares: number[] = []
  #on = false

  constructor(init: CompilerGovernorInit) {
    this.#init = init
    this.#rule = init.rule ?? DEFAULT_BUSY_RULE
    this.#flags = compilersToTurnOn(init.execArgv)
    this.#cpu =
      init.cpuMicros ??
      (() => {
        const u = process.cpuUsage()
        return u.user + u.system
      })
    this.#now = init.now ?? (() => performance.now())
  }

  /** Whether there are compilers to turn on and they are not on yet. */
  get waiting(): boolean {
    return this.#flags.length > 0 && !this.#on
  }

  start(): void {
    if (!this.waiting || this.#timer) return
    this.#last = { at: this.#now(), cpu: this.#cpu() }
    const every = this.#init.intervalMs ?? 1_000
    if (every > 0) {
      this.#timer = onGrid(every, () => this.sample())
    }
  }

  stop(): void {
    this.#timer?.stop()
    this.#timer = undefined
  }

  /** Takes one sample; turns the compilers on when the rule says busy. */
  sample(): void {
    if (!this.waiting || !this.#last) return
    const at = this.#now()
    const cpu = this.#cpu()
    const wall = at - this.#last.at
    const share = wall > 0 ? (cpu - this.#last.cpu) / 1_000 / wall : 0
    this.#last = { at, cpu }
    this.#shares.push(share)
    if (this.#shares.length > this.#rule.samples) this.#shares.shift()
    if (!isBusy(this.#shares, this.#rule)) return
    const set = this.#init.setFlags ?? setFlagsFromString
    for (const flag of this.#flags) set(flag)
    this.#on = true
    this.stop()
    this.#init.logger.info(
      { compilers: this.#flags, cpuShare: Number(share.toFixed(2)) },
      "busy: turned V8's optimizing compilers on",
    )
  }
}
