// Replicated-state benchmark: how fast a label write reaches every node (N = 5, 10, 20), how fast a healed
// 2|3 split with 1,000 divergent writes converges, what an idle agent writes to disk, how long an agent
// takes to restart, and how long the Store takes to load 10,000 records. Usage: scripts/bench/state [--quick]
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Level } from 'level'
import type { StatusView, WatchEvent } from '../../src/api/index.ts'
import { errorMessage } from '../../src/common/errors.ts'
import { createLogger } from '../../src/common/logger.ts'
import { Store, type WireRecord } from '../../src/state/index.ts'
import { agentArgs, client, setupCluster, startAgent, waitForAlive } from '../../test/lab/cluster.ts'
import { createLab, type Lab, type LabNode, waitFor } from '../../test/lab/lab.ts'
import { agentNodeFlags } from './proc.ts'
import { percentile, printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const SIZES = quick ? [5, 10] : [5, 10, 20]
/** Sequential label writes per size, their starts this far apart. */
const WRITES = quick ? 30 : 50
const SPACING_MS = 100
/** How long a write may take to reach every node before it counts as missing there. */
const DRAIN_MS = 10_000
const SPLIT_S = quick ? 10 : 60
const SPLIT_WRITES = 1000
const HEAL_TIMEOUT_MS = 60_000
const IDLE_SETTLE_S = quick ? 5 : 30
const IDLE_WINDOW_S = quick ? 30 : 300
const LOAD_RECORDS = 10_000
const LOAD_RUNS = 3
// The agent's V8 flags (bin/km1s), so the in-process load runs under the same heap limits.
const AGENT_NODE_FLAGS = agentNodeFlags()
const MB = 1e6

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)))
const log = (line: string) => process.stdout.write(`${line}\n`)

// ---------------------------------------------------------------------------------------------------------
// Watch streams and propagation

interface Seen extends WatchEvent {
  node: string
}

/** One `watch(prefix)` stream per node, collecting every change with the node's own `at`. */
class Watchers {
  readonly events = new Map<string, Seen[]>()
  readonly errors: string[] = []
  readonly #ctl = new AbortController()
  readonly #loops: Promise<void>[] = []

  constructor(nodes: LabNode[], prefix: string) {
    for (const node of nodes) {
      const list: Seen[] = []
      this.events.set(node.name, list)
      this.#loops.push(
        (async () => {
          try {
            for await (const e of client(node).watch(prefix, this.#ctl.signal))
              list.push({ ...e, node: node.name })
          } catch (err) {
            if (!this.#ctl.signal.aborted) this.errors.push(`${node.name}: ${errorMessage(err)}`)
          }
        })(),
      )
    }
  }

  of(node: LabNode): Seen[] {
    return this.events.get(node.name) ?? []
  }

  async close(): Promise<void> {
    this.#ctl.abort()
    await Promise.allSettled(this.#loops)
  }
}

/** Writes labels until every stream has delivered one: the streams are subscribed from then on. */
async function warmUp(nodes: LabNode[], watchers: Watchers): Promise<void> {
  const [writer, target] = nodes
  if (!writer || !target) throw new Error('warm-up needs two nodes')
  for (let attempt = 0; attempt < 10; attempt++) {
    const before = nodes.map((n) => watchers.of(n).length)
    await client(writer).label(target.name, { bench: `warmup${attempt}` })
    try {
      await waitFor(
        'every watch stream to deliver the warm-up write',
        async () => nodes.every((n, i) => watchers.of(n).length > (before[i] ?? 0)),
        { timeoutMs: 3_000, intervalMs: 20 },
      )
      return
    } catch {
      // a stream not yet subscribed, or a slow node: write again
    }
  }
  throw new Error(`the watch streams never all delivered a write: ${watchers.errors.join('; ')}`)
}

interface WriteRun {
  i: number
  writer: string
  target: string
  key: string
  /** Date.now() just before the label API call, and when it answered. */
  t0: number
  t1: number
}

interface WriteResult extends WriteRun {
  /** The writer's own change event for this write: its hlc and author identify the write everywhere. */
  hlc?: string
  author?: string
  writerApplyMs?: number
  /** Per other node: its `at` for this write minus t0; absent where it never arrived. */
  delays: Record<string, number>
  missing: string[]
  /** The slowest other node, or undefined while some node misses the write. */
  allMs?: number
}

/**
 * Matches each write to the watch events. Writes are sequential and only this benchmark writes `label/`
 * keys, so the writer's one local change of that key between t0 and t1 is the write; its (key, hlc,
 * author) is unique in the cluster and names the same write on every other node.
 */
function resolveWrites(writes: WriteRun[], nodes: LabNode[], watchers: Watchers): WriteResult[] {
  const index = new Map<string, Map<string, number>>()
  for (const node of nodes) {
    for (const e of watchers.of(node)) {
      const id = `${e.key}|${e.hlc}|${e.author}`
      let byNode = index.get(id)
      if (!byNode) {
        byNode = new Map()
        index.set(id, byNode)
      }
      if (!byNode.has(node.name)) byNode.set(node.name, e.at)
    }
  }
  return writes.map((w) => {
    const writer = nodes.find((n) => n.name === w.writer)
    const local = writer
      ? watchers
          .of(writer)
          .filter((e) => e.origin === 'local' && e.key === w.key && e.at >= w.t0 && e.at <= w.t1)
      : []
    const others = nodes.filter((n) => n.name !== w.writer).map((n) => n.name)
    const own = local.length === 1 ? local[0] : undefined
    if (!own) return { ...w, delays: {}, missing: others }
    const byNode = index.get(`${own.key}|${own.hlc}|${own.author}`) ?? new Map<string, number>()
    const delays: Record<string, number> = {}
    const missing: string[] = []
    for (const name of others) {
      const at = byNode.get(name)
      if (at === undefined) missing.push(name)
      else delays[name] = at - w.t0
    }
    return {
      ...w,
      hlc: own.hlc,
      author: own.author,
      writerApplyMs: own.at - w.t0,
      delays,
      missing,
      allMs: missing.length === 0 ? Math.max(...Object.values(delays)) : undefined,
    }
  })
}

interface PropagationRun {
  nodes: number
  fullMeshMs: number
  writes: WriteResult[]
  watchErrors: string[]
}

async function startLabCluster(n: number, name: string): Promise<{ lab: Lab; startMs: number }> {
  const lab = await createLab({ nodes: n, name })
  try {
    await setupCluster(lab.nodes)
    const t0 = performance.now()
    await Promise.all(lab.nodes.map((node) => startAgent(node, { extraArgs: agentArgs(node) })))
    await waitForAlive(lab.nodes, lab.nodes, 90_000)
    return { lab, startMs: performance.now() - t0 }
  } catch (err) {
    await lab.down()
    throw err
  }
}

async function propagation(lab: Lab, startMs: number): Promise<PropagationRun> {
  const nodes = lab.nodes
  const n = nodes.length
  const ids = new Map<string, string>()
  for (const node of nodes) ids.set(node.name, (await client(node).health()).id)
  const watchers = new Watchers(nodes, 'label/')
  try {
    await warmUp(nodes, watchers)
    const writes: WriteRun[] = []
    for (let i = 0; i < WRITES; i++) {
      const writer = nodes[i % n]
      const target = nodes[(i + 1) % n]
      if (!writer || !target) throw new Error('unreachable')
      const t0 = Date.now()
      await client(writer).label(target.name, { bench: `w${i}` })
      const t1 = Date.now()
      writes.push({
        i,
        writer: writer.name,
        target: target.name,
        key: `label/${ids.get(target.name)}`,
        t0,
        t1,
      })
      await sleep(t0 + SPACING_MS - Date.now())
    }
    const deadline = Date.now() + DRAIN_MS
    let results = resolveWrites(writes, nodes, watchers)
    while (results.some((r) => r.missing.length > 0) && Date.now() < deadline) {
      await sleep(100)
      results = resolveWrites(writes, nodes, watchers)
    }
    return { nodes: n, fullMeshMs: startMs, writes: results, watchErrors: [...watchers.errors] }
  } finally {
    await watchers.close()
  }
}

// ---------------------------------------------------------------------------------------------------------
// Idle disk writes

interface IoSample {
  pid: number
  writeBytes: number
  cancelledWriteBytes: number
  wchar: number
  syscw: number
  logBytes: number
}

function ioSample(node: LabNode): IoSample {
  const pid = node.pid()
  if (pid === undefined) throw new Error(`the agent of ${node.name} is not running`)
  const io = readFileSync(`/proc/${pid}/io`, 'utf8')
  const field = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(io)?.[1] ?? Number.NaN)
  return {
    pid,
    writeBytes: field('write_bytes'),
    cancelledWriteBytes: field('cancelled_write_bytes'),
    wchar: field('wchar'),
    syscw: field('syscw'),
    logBytes: Buffer.byteLength(node.log()),
  }
}

interface IdleNode {
  node: string
  /** Per hour, extrapolated from the window. */
  writeBytesPerHour: number
  cancelledWriteBytesPerHour: number
  wcharPerHour: number
  writeSyscallsPerHour: number
  logBytesPerHour: number
}

async function idleWrites(
  lab: Lab,
): Promise<{ windowS: number; nodes: IdleNode[]; before: IoSample[]; after: IoSample[] }> {
  await sleep(IDLE_SETTLE_S * 1000)
  const before = lab.nodes.map(ioSample)
  const t0 = performance.now()
  await sleep(IDLE_WINDOW_S * 1000)
  const after = lab.nodes.map(ioSample)
  const windowS = (performance.now() - t0) / 1000
  const perHour = (d: number) => (d * 3600) / windowS
  return {
    windowS,
    before,
    after,
    nodes: lab.nodes.map((node, i) => {
      const a = before[i]
      const b = after[i]
      if (!a || !b || a.pid !== b.pid)
        throw new Error(`the agent of ${node.name} restarted during the window`)
      return {
        node: node.name,
        writeBytesPerHour: perHour(b.writeBytes - a.writeBytes),
        cancelledWriteBytesPerHour: perHour(b.cancelledWriteBytes - a.cancelledWriteBytes),
        wcharPerHour: perHour(b.wchar - a.wchar),
        writeSyscallsPerHour: perHour(b.syscw - a.syscw),
        logBytesPerHour: perHour(b.logBytes - a.logBytes),
      }
    }),
  }
}

// ---------------------------------------------------------------------------------------------------------
// Split, heal, restart

async function digests(nodes: LabNode[]): Promise<string[]> {
  return Promise.all(nodes.map(async (n) => (await client(n).status()).state.digest))
}

/** Milliseconds from `t0` (performance.now()) until a poll finds one digest on all nodes; NaN on timeout. */
async function timeToSameDigest(nodes: LabNode[], t0: number, timeoutMs: number): Promise<number> {
  for (;;) {
    const round = performance.now()
    try {
      const ds = await digests(nodes)
      if (new Set(ds).size === 1) return performance.now() - t0
    } catch {
      // an agent busy or restarting: poll again
    }
    if (performance.now() - t0 > timeoutMs) return Number.NaN
    await sleep(100 - (performance.now() - round))
  }
}

interface HealRun {
  splitS: number
  writesOk: number
  writesFailed: number
  writeErrors: string[]
  labelCallMs: { p50: number; p99: number }
  digestsBeforeHeal: string[]
  /** Per node, mesh connections still open at the end of the split (TCP may outlive a silent split). */
  connectedBeforeHeal: number[]
  sidesDiverged: boolean
  convergeMs: number
  aliveAgainMs: number
  sync: { sessions: number; failures: number; recordsReceived: number }
  statusAfter: Array<Pick<StatusView['state'], 'records' | 'tombstones' | 'digest'>>
  restart: RestartRun
}

interface RestartRun {
  node: string
  recordsBefore: number
  recordsAfter: number
  stopMs: number
  readyMs: number
  sameDigestMs: number
}

async function splitAndHeal(): Promise<HealRun> {
  const { lab } = await startLabCluster(5, 'stheal')
  try {
    const nodes = lab.nodes
    const a = nodes.slice(0, 2)
    const b = nodes.slice(2)
    if (Number.isNaN(await timeToSameDigest(nodes, performance.now(), 30_000)))
      throw new Error('the fresh cluster never reached one digest')
    await lab.partition(a, b)
    log(
      `  split ${a.map((x) => x.name).join(',')} | ${b.map((x) => x.name).join(',')}: ${SPLIT_WRITES} writes over ${SPLIT_S} s`,
    )
    const tSplit = Date.now()
    const perWriter = SPLIT_WRITES / nodes.length
    const interval = (SPLIT_S * 1000 * 0.95) / perWriter
    let writesOk = 0
    let writesFailed = 0
    const writeErrors: string[] = []
    const callMs: number[] = []
    await Promise.all(
      nodes.map(async (writer, k) => {
        for (let j = 0; j < perWriter; j++) {
          await sleep(tSplit + (k * interval) / nodes.length + j * interval - Date.now())
          // Every writer labels every node in turn: both sides write the same five keys.
          const target = nodes[(k + j) % nodes.length]
          if (!target) continue
          const t = performance.now()
          try {
            await client(writer).label(target.name, {
              h: `${writer.name}-${j}`,
              [`from-${writer.name}`]: `${j}`,
            })
            writesOk++
            callMs.push(performance.now() - t)
          } catch (err) {
            writesFailed++
            if (writeErrors.length < 5) writeErrors.push(`${writer.name}: ${errorMessage(err)}`)
          }
        }
      }),
    )
    await sleep(tSplit + SPLIT_S * 1000 - Date.now())
    // Each side settles on its own state (gossip within a side), and the two differ.
    const sideA = await timeToSameDigest(a, performance.now(), 10_000)
    const sideB = await timeToSameDigest(b, performance.now(), 10_000)
    const digestsBeforeHeal = await digests(nodes)
    const sidesDiverged =
      !Number.isNaN(sideA) && !Number.isNaN(sideB) && digestsBeforeHeal[0] !== digestsBeforeHeal[2]
    const beforeStatus = await Promise.all(nodes.map((n) => client(n).status()))
    const before = beforeStatus.map((s) => s.state)

    const tHeal = performance.now()
    await lab.heal()
    const convergeMs = await timeToSameDigest(nodes, tHeal, HEAL_TIMEOUT_MS)
    let aliveAgainMs = Number.NaN
    try {
      await waitForAlive(nodes, nodes, 30_000)
      aliveAgainMs = performance.now() - tHeal
    } catch {
      // reported as NaN
    }
    const after = await Promise.all(nodes.map(async (n) => (await client(n).status()).state))
    const sum = (xs: StatusView['state'][], f: (s: StatusView['state']) => number) =>
      xs.reduce((acc, s) => acc + f(s), 0)
    const restart = await restartAgent(nodes, 2)
    return {
      splitS: SPLIT_S,
      writesOk,
      writesFailed,
      writeErrors,
      labelCallMs: { p50: percentile(callMs, 50), p99: percentile(callMs, 99) },
      digestsBeforeHeal,
      connectedBeforeHeal: beforeStatus.map((s) => s.mesh.connectedPeers),
      sidesDiverged,
      convergeMs,
      aliveAgainMs,
      sync: {
        sessions: sum(after, (s) => s.syncSessions) - sum(before, (s) => s.syncSessions),
        failures: sum(after, (s) => s.syncFailures) - sum(before, (s) => s.syncFailures),
        recordsReceived: sum(after, (s) => s.recordsReceived) - sum(before, (s) => s.recordsReceived),
      },
      statusAfter: after.map((s) => ({ records: s.records, tombstones: s.tombstones, digest: s.digest })),
      restart,
    }
  } finally {
    await lab.down()
  }
}

/** SIGTERM one agent, start it again: time to exit, time to API ready, then to one digest everywhere. */
async function restartAgent(nodes: LabNode[], index: number): Promise<RestartRun> {
  const node = nodes[index]
  if (!node) throw new Error(`no node ${index + 1}`)
  const st = (await client(node).status()).state
  const t0 = performance.now()
  await node.stop()
  const stopMs = performance.now() - t0
  const t1 = performance.now()
  await startAgent(node, { extraArgs: agentArgs(node) })
  const readyMs = performance.now() - t1
  const st2 = (await client(node).status()).state
  // Its own node record changes at start (startedAt), so the others need that one record back.
  const sameDigestMs = await timeToSameDigest(nodes, t1, 30_000)
  return {
    node: node.name,
    recordsBefore: st.records + st.tombstones,
    recordsAfter: st2.records + st2.tombstones,
    stopMs,
    readyMs,
    sameDigestMs,
  }
}

// ---------------------------------------------------------------------------------------------------------
// Loading 10,000 records (the Store alone, as the agent opens it)

async function openStore(dir: string, privateKey: Awaited<ReturnType<typeof generateKeyPair>>) {
  const db = new Level<string, unknown>(join(dir, 'db'), {
    valueEncoding: 'json',
    cacheSize: 1 << 20,
    writeBufferSize: 1 << 20,
  })
  await db.open()
  const store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey,
    logger: createLogger({ level: 'silent' }),
    flushDelayMs: 60_000,
  })
  return { db, store }
}

/** In a child under the agent's V8 flags: open the database and load it; prints {ms, records}. */
async function loadChild(dir: string): Promise<void> {
  const privateKey = await generateKeyPair('Ed25519')
  const t0 = performance.now()
  const { db, store } = await openStore(dir, privateKey)
  await store.load()
  const ms = performance.now() - t0
  const records = store.stats().records
  await store.stop()
  await db.close()
  process.stdout.write(`${JSON.stringify({ ms, records })}\n`)
}

async function storeLoad(): Promise<{
  records: number
  writeMs: number
  loadMs: number[]
  loaded: number[]
}> {
  const dir = mkdtempSync(join(tmpdir(), 'km1s-bench-load-'))
  try {
    const privateKey = await generateKeyPair('Ed25519')
    const { db, store } = await openStore(dir, privateKey)
    await store.load()
    const t0 = performance.now()
    for (let i = 0; i < LOAD_RECORDS; i++) {
      // A workload-sized value (~250 bytes), signed, as a workload record will be.
      await store.put(`workload/bench-${i}`, {
        name: `bench-${i}`,
        artifact: `app-${i}:1.4.${i % 97}`,
        command: ['/app/server', '--listen', ':8080'],
        replicas: 1 + (i % 3),
        cpu: 250,
        memory: 128 * 1024 * 1024,
        arch: null,
        labels: { zone: 'garage', disk: 'ssd' },
        ports: [8080, 9090],
        service: null,
        restart: 'always',
        env: { MODE: 'production', LOG_LEVEL: 'info', REGION: 'garage' },
        exclusive: false,
        stopped: false,
      })
    }
    await store.stop()
    await db.close()
    const writeMs = performance.now() - t0
    const loadMs: number[] = []
    const loaded: number[] = []
    for (let r = 0; r < LOAD_RUNS; r++) {
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          [...AGENT_NODE_FLAGS, import.meta.filename, '--load-child', dir],
          {
            stdio: ['ignore', 'pipe', 'inherit'],
          },
        )
        let text = ''
        child.stdout.setEncoding('utf8').on('data', (c: string) => {
          text += c
        })
        child.on('error', reject)
        child.on('close', (code) =>
          code === 0 ? resolve(text) : reject(new Error(`the load child exited with ${code}`)),
        )
      })
      const { ms, records } = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as {
        ms: number
        records: number
      }
      loadMs.push(ms)
      loaded.push(records)
    }
    return { records: LOAD_RECORDS, writeMs, loadMs, loaded }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the state benchmark needs root (network namespaces)')
  const started = performance.now()
  const rows: Row[] = []

  log(`loading ${LOAD_RECORDS} records into a Store (no agent)…`)
  const load = await storeLoad()
  log(`  load: ${load.loadMs.map((m) => m.toFixed(0)).join(', ')} ms (${load.loaded.join(', ')} records)`)

  const runs: PropagationRun[] = []
  let idle: Awaited<ReturnType<typeof idleWrites>> | undefined
  for (const n of SIZES) {
    log(`N=${n}: starting the cluster…`)
    const { lab, startMs } = await startLabCluster(n, `stprop${n}`)
    try {
      const run = await propagation(lab, startMs)
      runs.push(run)
      const all = run.writes.map((w) => w.allMs).filter((x) => x !== undefined)
      log(
        `  N=${n}: ${all.length}/${run.writes.length} writes reached all nodes; p50 ${percentile(all, 50)} ms, max ${Math.max(...all)} ms`,
      )
      if (n === 5) {
        log(
          `  idle disk writes of the 5 agents: ${IDLE_SETTLE_S} s settle, then a ${IDLE_WINDOW_S} s window…`,
        )
        idle = await idleWrites(lab)
      }
    } finally {
      await lab.down()
    }
  }

  log('split and heal (5 nodes)…')
  const heal = await splitAndHeal()
  log(
    `  ${heal.writesOk} writes (${heal.writesFailed} failed); converged ${heal.convergeMs.toFixed(0)} ms after heal`,
  )

  for (const run of runs) {
    const all = run.writes.map((w) => w.allMs).filter((x) => x !== undefined)
    const missing = run.writes.filter((w) => w.allMs === undefined).length
    rows.push({
      metric: `write to all nodes, p50, N=${run.nodes} (${run.writes.length} writes)`,
      value: percentile(all, 50),
      unit: 'ms',
    })
    rows.push({
      metric: `write to all nodes, p99, N=${run.nodes}`,
      value: percentile(all, 99),
      unit: 'ms',
      target: run.nodes === 20 ? '<= 1000' : undefined,
    })
    const pairs = run.writes.flatMap((w) => Object.values(w.delays))
    rows.push({
      metric: `write to one other node, p50, N=${run.nodes}`,
      value: percentile(pairs, 50),
      unit: 'ms',
    })
    if (missing > 0)
      rows.push({
        metric: `writes missing on some node after ${DRAIN_MS / 1000} s, N=${run.nodes}`,
        value: missing,
        unit: 'writes',
      })
  }
  const api = runs[0]?.writes.map((w) => w.t1 - w.t0) ?? []
  rows.push({ metric: 'label API call (durable write), p50, N=5', value: percentile(api, 50), unit: 'ms' })
  rows.push({
    metric: `heal to identical digests (2|3, ${SPLIT_S} s, ${heal.writesOk} writes)`,
    value: Math.round(heal.convergeMs),
    unit: 'ms',
    target: '<= 5000',
  })
  rows.push({ metric: 'heal to all 5 alive on every node', value: Math.round(heal.aliveAgainMs), unit: 'ms' })
  if (idle) {
    const wb = idle.nodes.map((x) => x.writeBytesPerHour / MB)
    const wc = idle.nodes.map((x) => x.wcharPerHour / MB)
    const lg = idle.nodes.map((x) => x.logBytesPerHour / MB)
    rows.push({
      metric: `idle agent write_bytes, median of 5 (${Math.round(idle.windowS)} s window)`,
      value: percentile(wb, 50),
      unit: 'MB/hour',
      baseline: 23,
      target: '<= 1',
    })
    rows.push({
      metric: 'idle agent write_bytes, worst of 5',
      value: Math.max(...wb),
      unit: 'MB/hour',
      target: '<= 1',
    })
    rows.push({
      metric: 'idle agent wchar (incl. sockets), median of 5',
      value: percentile(wc, 50),
      unit: 'MB/hour',
    })
    rows.push({
      metric: 'idle agent log file growth, median of 5',
      value: percentile(lg, 50),
      unit: 'MB/hour',
    })
  }
  rows.push({
    metric: `agent restart: SIGTERM to exit (${heal.restart.recordsBefore} records)`,
    value: Math.round(heal.restart.stopMs),
    unit: 'ms',
  })
  rows.push({
    metric: 'agent restart: start to API ready',
    value: Math.round(heal.restart.readyMs),
    unit: 'ms',
  })
  rows.push({
    metric: 'agent restart: start to identical digests',
    value: Math.round(heal.restart.sameDigestMs),
    unit: 'ms',
  })
  rows.push({
    metric: `Store open + load of ${LOAD_RECORDS} records, median of ${LOAD_RUNS}`,
    value: Math.round(percentile(load.loadMs, 50)),
    unit: 'ms',
    target: '< 1000',
  })

  printRows(
    'km1s replicated-state benchmark (baseline: an idle k3s server, 23-39 MB/hour, published, not measured here)',
    rows,
  )
  const totalS = (performance.now() - started) / 1000
  log(`\nruntime ${totalS.toFixed(0)} s${quick ? ' (--quick)' : ''}`)
  const file = writeJson('state', {
    date: new Date().toISOString(),
    quick,
    runtimeS: totalS,
    propagation: runs,
    heal,
    idle,
    load,
    rows,
  })
  log(`JSON: ${file}`)
}

const childAt = process.argv.indexOf('--load-child')
if (childAt >= 0) await loadChild(process.argv[childAt + 1] ?? '')
else await main()
