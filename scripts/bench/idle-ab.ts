// Idle cost A/B: what a change of the agents' V8 flags or environment does to an idle agent's RSS and CPU,
// against the default measured in the same rounds. Each round starts a fresh N-node lab per variant, in
// turn (the machine's speed drifts by more than most changes move; alternating is what shows them), lets it
// settle, then reads every agent's RSS and CPU over a window; the median agent is the round's figure.
//
// Usage: scripts/bench/idle-ab [--rounds R] [--nodes N] [--settle S] [--window S] NAME:SPEC...
//   SPEC: space-separated words; `--flag` is a V8 flag added to bin/km1s's defaults, `-flag` removes one
//   of them, `K=V` goes into the agents' environment. Example:
//   scripts/bench/idle-ab 'nosp:--no-sparkplug' 'tunables:GLIBC_TUNABLES=glibc.malloc.arena_max=2'
import { parseArgs } from 'node:util'
import { type Cluster, startCluster, waitForAlive } from '../../test/lab/cluster.ts'
import { agentNodeFlags, idleCost } from './proc.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

interface Variant {
  name: string
  flags: string[]
  env: Record<string, string>
}

/** A variant from `NAME:SPEC` (pure, see the usage above); throws a one-sentence error on a bad one. */
export function parseVariant(arg: string, defaults: string[]): Variant {
  const colon = arg.indexOf(':')
  const name = colon < 0 ? arg : arg.slice(0, colon)
  if (!/^[\w.-]+$/.test(name)) throw new Error(`variant "${arg}" needs a name of letters, digits, . _ -`)
  if (name === 'default') throw new Error('"default" is always measured; give the other variant another name')
  const flags = [...defaults]
  const env: Record<string, string> = {}
  for (const word of (colon < 0 ? '' : arg.slice(colon + 1)).split(/\s+/).filter(Boolean)) {
    if (word.startsWith('--')) flags.push(word)
    else if (word.startsWith('-')) {
      const at = flags.indexOf(`-${word}`)
      if (at < 0) throw new Error(`variant ${name} removes ${word.slice(1)}, which bin/km1s does not give`)
      flags.splice(at, 1)
    } else if (/^[A-Z_][A-Z0-9_]*=/.test(word))
      env[word.slice(0, word.indexOf('='))] = word.slice(word.indexOf('=') + 1)
    else throw new Error(`variant ${name}: "${word}" is neither --flag, -flag nor K=V`)
  }
  return { name, flags, env }
}

interface RoundFigure {
  variant: string
  round: number
  rssMiB: number
  anonMiB: number
  cpuPercent: number
}

async function measure(
  v: Variant,
  round: number,
  nodes: number,
  settleS: number,
  windowS: number,
): Promise<RoundFigure> {
  const env = { ...v.env, KM1S_NODE_FLAGS: v.flags.join(' ') }
  let c: Cluster | undefined
  try {
    c = await startCluster(nodes, { name: 'idleab', agent: { env } })
    await waitForAlive(c.nodes, c.nodes, 60_000)
    await new Promise((r) => setTimeout(r, settleS * 1000))
    const pids = c.nodes.map((n) => n.pid()).filter((p): p is number => p !== undefined)
    const cost = await idleCost(pids, windowS)
    return {
      variant: v.name,
      round,
      rssMiB: percentile(cost.rssMiB, 50),
      anonMiB: percentile(cost.anonMiB, 50),
      cpuPercent: percentile(cost.cpuPercent, 50),
    }
  } finally {
    await c?.lab.down()
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      rounds: { type: 'string', default: '2' },
      nodes: { type: 'string', default: '10' },
      settle: { type: 'string', default: '40' },
      window: { type: 'string', default: '30' },
    },
  })
  const whole = (name: string, s: string) => {
    const n = Number(s)
    if (!Number.isInteger(n) || n < 1)
      throw new Error(`--${name} is a whole number of at least 1, not "${s}"`)
    return n
  }
  const rounds = whole('rounds', values.rounds)
  const nodes = whole('nodes', values.nodes)
  const settleS = whole('settle', values.settle)
  const windowS = whole('window', values.window)
  if (process.getuid?.() !== 0) throw new Error('the idle A/B needs root (network namespaces)')
  if (positionals.length === 0)
    throw new Error('give at least one variant NAME:SPEC to compare with the default')
  const defaults = agentNodeFlags()
  const variants = [
    { name: 'default', flags: defaults, env: {} },
    ...positionals.map((a) => parseVariant(a, defaults)),
  ]
  const twice = variants.find((v, i) => variants.findIndex((w) => w.name === v.name) !== i)
  if (twice) throw new Error(`the variant name ${twice.name} is given twice`)
  const figures: RoundFigure[] = []
  for (let round = 1; round <= rounds; round++) {
    for (const v of variants) {
      const f = await measure(v, round, nodes, settleS, windowS)
      figures.push(f)
      process.stdout.write(
        `round ${round} ${v.name}: RSS ${f.rssMiB.toFixed(1)} MiB (anon ${f.anonMiB.toFixed(1)}), CPU ${f.cpuPercent.toFixed(2)} %\n`,
      )
    }
  }
  const median = (name: string, key: 'rssMiB' | 'anonMiB' | 'cpuPercent') =>
    percentile(
      figures.filter((f) => f.variant === name).map((f) => f[key]),
      50,
    )
  const measures = [
    { key: 'rssMiB', label: 'idle RSS, median agent', unit: 'MiB' },
    { key: 'anonMiB', label: 'anonymous RSS', unit: 'MiB' },
    { key: 'cpuPercent', label: 'idle CPU', unit: '% core' },
  ] as const
  const rows: Row[] = variants.flatMap((v) =>
    measures.map(({ key, label, unit }) => ({
      metric: `${v.name}: ${label}`,
      value: median(v.name, key),
      unit,
      baseline: v.name === 'default' ? undefined : median('default', key),
    })),
  )
  printRows(`idle A/B, ${nodes} nodes, ${rounds} rounds (baseline: bin/km1s's defaults, same rounds)`, rows)
  const file = writeJson('idle-ab', {
    date: new Date().toISOString(),
    nodes,
    rounds,
    settleS,
    windowS,
    variants,
    figures,
    rows,
  })
  process.stdout.write(`\nJSON: ${file}\n`)
}

if (import.meta.main) {
  await main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(1)
  })
}
