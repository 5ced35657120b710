// What the benchmarks read about a process: its memory and CPU from /proc, and the V8 flags bin/km1s gives
// an agent (read from the script itself, so that a baseline or an in-process load runs under the same ones).
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'

const CLK_TCK = 100

export interface ProcSample {
  rssKiB: number
  anonKiB: number
  cpuTicks: number
}

export function sample(pid: number): ProcSample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? Number.NaN)
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return { rssKiB: kib('VmRSS'), anonKiB: kib('RssAnon'), cpuTicks: Number(fields[11]) + Number(fields[12]) }
}

export interface IdleCost {
  rssMiB: number[]
  anonMiB: number[]
  cpuPercent: number[]
}

/** RSS and anonymous RSS at the end of a `windowS` window, and the share of one core used during it. */
export async function idleCost(pids: number[], windowS: number): Promise<IdleCost> {
  const before = pids.map(sample)
  await new Promise((r) => setTimeout(r, windowS * 1000))
  const after = pids.map(sample)
  return {
    rssMiB: after.map((s) => s.rssKiB / 1024),
    anonMiB: after.map((s) => s.anonKiB / 1024),
    cpuPercent: after.map((s, i) => ((s.cpuTicks - (before[i]?.cpuTicks ?? 0)) / CLK_TCK / windowS) * 100),
  }
}

/** The default of `KM1S_NODE_FLAGS` in bin/km1s: the V8 flags every agent runs with. */
export function agentNodeFlags(): string[] {
  const script = readFileSync(resolve(import.meta.dirname, '../../bin/km1s'), 'utf8')
  const flags = /\$\{KM1S_NODE_FLAGS:-([^}]*)\}/.exec(script)?.[1]
  if (!flags) throw new Error('bin/km1s has no default for KM1S_NODE_FLAGS')
  return flags.trim().split(/\s+/)
}
