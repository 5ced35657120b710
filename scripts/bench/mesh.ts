// Mesh benchmark: how fast N agents find each other, how fast one answers its API, and what an idle agent
// costs, beside a bare `node` process measured in the same run. Usage: scripts/bench/mesh [--quick]
import { spawn } from 'node:child_process'
import { agentArgs, type Cluster, client, setupCluster, startAgent } from '../../test/lab/cluster.ts'
import { createLab, type LabNode, waitFor } from '../../test/lab/lab.ts'
import { agentNodeFlags, idleCost } from './proc.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const SIZES = quick ? [3, 10] : [3, 10, 20]
const RUNS: Record<number, number> = quick ? { 3: 1, 10: 1 } : { 3: 3, 10: 3, 20: 1 }
const IDLE_SETTLE_S = quick ? 10 : 60
const CPU_WINDOW_S = quick ? 5 : 30

interface MeshRun {
  nodes: number
  fullMeshMs: number
  apiReadyMs: number[]
}

async function timeFullMesh(n: number, keep: boolean): Promise<{ run: MeshRun; cluster?: Cluster }> {
  const lab = await createLab({ nodes: n, name: `bench${n}` })
  try {
    await setupCluster(lab.nodes)
    const t0 = performance.now()
    const apiReadyMs: number[] = []
    await Promise.all(
      lab.nodes.map(async (node) => {
        await startAgent(node, { extraArgs: agentArgs(node) })
        apiReadyMs.push(performance.now() - t0)
      }),
    )
    const seen = await Promise.all(lab.nodes.map((node) => waitFullView(node, n, t0)))
    const run = { nodes: n, fullMeshMs: Math.max(...seen), apiReadyMs }
    if (keep) return { run, cluster: { lab, nodes: lab.nodes, token: '' } }
    await lab.down()
    return { run }
  } catch (err) {
    await lab.down()
    throw err
  }
}

async function waitFullView(node: LabNode, n: number, t0: number): Promise<number> {
  return waitFor(
    `${node.name} to see ${n} alive nodes`,
    async () => {
      const alive = (await client(node).nodes()).filter((v) => v.state === 'alive').length
      return alive === n ? performance.now() - t0 : undefined
    },
    // Polling every node faster than this loads the 2 cores the agents start on.
    { timeoutMs: 60_000, intervalMs: 100 },
  )
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the mesh benchmark needs root (network namespaces)')
  const runs: MeshRun[] = []
  let idle: Cluster | undefined
  for (const n of SIZES) {
    for (let i = 0; i < (RUNS[n] ?? 1); i++) {
      const keep = n === 10 && i === (RUNS[n] ?? 1) - 1
      const { run, cluster } = await timeFullMesh(n, keep)
      runs.push(run)
      if (cluster) idle = cluster
      process.stdout.write(`N=${n} run ${i + 1}: full mesh in ${run.fullMeshMs.toFixed(0)} ms\n`)
    }
  }
  if (!idle) throw new Error('no 10-node lab kept for the idle measurement')
  // A bare node process with the agent's V8 flags, started now so both settle for the same time.
  const bare = spawn(process.execPath, [...agentNodeFlags(), '-e', 'setInterval(() => {}, 1000)'], {
    stdio: 'ignore',
  })
  try {
    await new Promise((r) => setTimeout(r, IDLE_SETTLE_S * 1000))
    const agentPids = idle.nodes.map((n) => n.pid()).filter((p): p is number => p !== undefined)
    const [agents, baseline] = await Promise.all([
      idleCost(agentPids, CPU_WINDOW_S),
      idleCost([bare.pid ?? 0], CPU_WINDOW_S),
    ])
    const rows: Row[] = []
    for (const n of SIZES) {
      const times = runs.filter((r) => r.nodes === n).map((r) => r.fullMeshMs)
      rows.push({
        metric: `full mesh, N=${n} (median of ${times.length})`,
        value: Math.round(percentile(times, 50)),
        unit: 'ms',
        target: n === 10 ? '<= 3000' : undefined,
      })
    }
    const ready = runs.filter((r) => r.nodes === 3).flatMap((r) => r.apiReadyMs)
    rows.push({
      metric: 'start to API ready, p50 (N=3 runs)',
      value: Math.round(percentile(ready, 50)),
      unit: 'ms',
    })
    const ready10 = runs.filter((r) => r.nodes === 10).flatMap((r) => r.apiReadyMs)
    rows.push({
      metric: 'start to API ready, p50 (10 starting at once)',
      value: Math.round(percentile(ready10, 50)),
      unit: 'ms',
    })
    rows.push({
      metric: `idle agent RSS after ${IDLE_SETTLE_S}s (median of 10)`,
      value: percentile(agents.rssMiB, 50),
      unit: 'MiB',
      baseline: baseline.rssMiB[0],
      target: '<= 80',
    })
    rows.push({
      metric: 'idle agent private (anon) RSS',
      value: percentile(agents.anonMiB, 50),
      unit: 'MiB',
      baseline: baseline.anonMiB[0],
    })
    rows.push({
      metric: `idle agent CPU over ${CPU_WINDOW_S}s (median of 10)`,
      value: percentile(agents.cpuPercent, 50),
      unit: '% core',
      baseline: baseline.cpuPercent[0],
      target: '<= 1',
    })
    rows.push({
      metric: 'idle agent CPU, worst of 10',
      value: Math.max(...agents.cpuPercent),
      unit: '% core',
    })
    printRows('km1s mesh benchmark (baseline: a bare node process with the same V8 flags)', rows)
    const file = writeJson('mesh', {
      date: new Date().toISOString(),
      quick,
      runs,
      idle: { agents, baseline },
      rows,
    })
    process.stdout.write(`\nJSON: ${file}\n`)
  } finally {
    bare.kill('SIGKILL')
    await idle.lab.down()
  }
}

await main()
