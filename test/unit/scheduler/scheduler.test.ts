// The reconcile loop against a real Store and an in-memory runtime: what this node starts, writes, hands over
// and stops, with views given by a fake membership.
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Level } from 'level'
import { pino } from 'pino'
import type { Member } from '../../../src/membership/index.ts'
import type { ContainerSpecInput, ContainerStatus, Runtime } from '../../../src/runtime/types.ts'
import { type ArtifactSource, normalizeWorkload, place, Scheduler } from '../../../src/scheduler/index.ts'
import { type StatusValue, Store, type WireRecord } from '../../../src/state/index.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(3_000)

const silent = pino({ level: 'silent' })
const GiB = 1024 ** 3

class FakeRuntime {
  readonly kind = 'oci' as const
  readonly containers = new Map<string, ContainerStatus & { spec: ContainerSpecInput }>()
  readonly #listeners = new Set<(s: ContainerStatus) => void>()
  creates = 0
  removes = 0
  failNext = false
  async create(spec: ContainerSpecInput): Promise<ContainerStatus> {
    this.creates++
    const failed = this.failNext
    this.failNext = false
    const c = {
      name: spec.name,
      state: failed ? ('failed' as const) : ('running' as const),
      ip: `10.42.0.${this.containers.size + 2}`,
      processes: [
        { name: 'main', state: 'running' as const, pid: 1, restarts: 0, lastExit: null, nextStartAt: null },
      ],
      error: failed ? 'the container could not be made: no bridge' : null,
      createdAt: new Date().toISOString(),
      spec,
    }
    this.containers.set(spec.name, c)
    for (const l of this.#listeners) l(c)
    return c
  }
  async remove(name: string): Promise<void> {
    this.removes++
    this.containers.delete(name)
  }
  list(): ContainerStatus[] {
    return [...this.containers.values()]
  }
  get(name: string) {
    return this.containers.get(name)
  }
  onChange(l: (s: ContainerStatus) => void) {
    this.#listeners.add(l)
    return () => this.#listeners.delete(l)
  }
}

interface Env {
  store: Store
  runtime: FakeRuntime
  scheduler: Scheduler
  selfId: string
  peers: string[]
  /** Peer ids this node hears; the rest are dead (or never heard). */
  heard: Set<string>
  clock: { now: number }
}

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function setup(
  opts: { peers?: number; graceMs?: number; artifacts?: ArtifactSource } = {},
): Promise<Env> {
  const dir = await mkdtemp(join(tmpdir(), 'km1s-sched-test-'))
  const db = new Level<string, unknown>(join(dir, 'db'), { valueEncoding: 'json' })
  await db.open()
  const key = await generateKeyPair('Ed25519')
  const store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey: key,
    logger: silent,
    flushDelayMs: 3_600_000,
  })
  await store.load()
  const selfId = peerIdFromPrivateKey(key).toString()
  const peers: string[] = []
  for (let i = 0; i < (opts.peers ?? 2); i++)
    peers.push(peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString())
  const heard = new Set(peers)
  const clock = { now: 1_000_000 }
  const info = (name: string) => ({
    name,
    arch: 'amd64',
    cpus: 4,
    memory: 4 * GiB,
    version: '0.1.0',
    addresses: [],
    startedAt: 1,
    wgPublicKey: null,
  })
  const members = (): Member[] => [
    { id: selfId, self: true, state: 'alive', lastHeard: clock.now, info: info('self') },
    ...peers.map((id, i) => ({
      id,
      self: false,
      state: heard.has(id) ? ('alive' as const) : ('dead' as const),
      lastHeard: heard.has(id) ? clock.now : 0,
      info: info(`p${i}`),
    })),
  ]
  const runtime = new FakeRuntime()
  const scheduler = new Scheduler({
    selfId,
    nodeName: () => 'self',
    store,
    membership: { members },
    runtime: runtime as unknown as Runtime,
    artifacts: opts.artifacts,
    logger: silent,
    tickMs: 20,
    startupGraceMs: opts.graceMs ?? 0,
    stopDelayMs: 100,
    handoverTimeoutMs: 5_000,
    now: () => clock.now,
  })
  cleanups.push(async () => {
    await scheduler.stop()
    await store.stop()
    await db.close()
    await rm(dir, { recursive: true, force: true })
  })
  scheduler.start()
  return { store, runtime, scheduler, selfId, peers, heard, clock }
}

const statusOf = (e: Env, name: string) =>
  e.store.get(`status/${e.selfId}/${name}`)?.value as StatusValue | undefined

/** What place() gives this node for `w` over self + the heard peers. */
function expectedHere(e: Env, replicas: number): string[] {
  const nodes = [e.selfId, ...e.peers.filter((p) => e.heard.has(p))].map((id) => ({
    id,
    name: id,
    arch: 'amd64',
    cpus: 4,
    memory: 4 * GiB,
    labels: {},
  }))
  const w = normalizeWorkload({ name: 'web', replicas, command: ['/bin/true'] })
  const { assignments } = place({
    workloads: [{ ...w, arches: null }],
    nodes,
    knownNodes: e.peers.length + 1,
  })
  return [...assignments].filter(([, id]) => id === e.selfId).map(([c]) => c)
}

describe('Scheduler', () => {
  it('runs exactly the replicas placed here and writes their status records', async () => {
    const e = await setup({ peers: 2 })
    await e.store.put('workload/web', normalizeWorkload({ name: 'web', replicas: 6, command: ['/bin/true'] }))
    const want = expectedHere(e, 6).sort()
    assert.ok(want.length > 0)
    await until(
      'the replicas placed here',
      () => [...e.runtime.containers.keys()].sort().join() === want.join(),
    )
    await until('their status records', () => want.every((c) => statusOf(e, c)?.state === 'running'))
    const s = statusOf(e, want[0] as string) as StatusValue
    assert.equal(s.workload, 'web')
    assert.equal(s.node, 'self')
    assert.match(s.ip ?? '', /^10\.42\.0\./)
    assert.equal(s.healthy, true)
    assert.equal(typeof s.startedAt, 'number')
    const c = e.runtime.containers.get(want[0] as string)
    assert.deepEqual(c?.spec.processes[0]?.args, ['/bin/true'])
  })

  it('takes over the replicas of a dead peer, and hands them back only once the peer runs them', async () => {
    const e = await setup({ peers: 1 })
    const [peer] = e.peers as [string]
    await e.store.put('workload/web', normalizeWorkload({ name: 'web', replicas: 2, command: ['/bin/true'] }))
    await until('one replica here', () => e.runtime.containers.size === 1)
    e.heard.delete(peer)
    await until('both replicas here', () => e.runtime.containers.size === 2)
    e.heard.add(peer)
    const theirs =
      expectedHere(e, 2).length === 1
        ? ['web-0', 'web-1'].find((c) => !expectedHere(e, 2).includes(c))
        : undefined
    assert.ok(theirs)
    // The peer is back but does not report the replica running yet: ours keeps serving.
    e.clock.now += 1_000
    await new Promise((r) => setTimeout(r, 200))
    assert.equal(e.runtime.containers.size, 2, 'no hand-over before the new owner runs it')
    // A peer's record cannot be signed here; make the hand-over time out instead (the 5 s bound).
    e.clock.now += 6_000
    await until(
      'the surplus stopped',
      () => e.runtime.containers.size === 1 && !e.runtime.containers.has(theirs),
    )
    await until('its status deleted', () => statusOf(e, theirs) === undefined)
  })

  it('counts unheard peers as live during the start-up grace, then runs every replica alone', async () => {
    const e = await setup({ peers: 2, graceMs: 5_000 })
    e.heard.clear()
    await e.store.put('workload/web', normalizeWorkload({ name: 'web', replicas: 3, command: ['/bin/true'] }))
    await new Promise((r) => setTimeout(r, 150))
    const inGrace = e.runtime.containers.size
    assert.ok(inGrace <= 1, `${inGrace} replicas started during the grace`)
    e.clock.now += 6_000
    await until('all three alone', () => e.runtime.containers.size === 3)
  })

  it('stops replicas of a removed, stopped or scaled-down workload at once', async () => {
    const e = await setup({ peers: 0 })
    const w = normalizeWorkload({ name: 'web', replicas: 3, command: ['/bin/true'] })
    await e.store.put('workload/web', w)
    await until('three', () => e.runtime.containers.size === 3)
    await e.store.put('workload/web', { ...w, replicas: 1 })
    await until('one', () => e.runtime.containers.size === 1 && e.runtime.containers.has('web-0'))
    await until(
      'statuses of the others gone',
      () => statusOf(e, 'web-1') === undefined && statusOf(e, 'web-2') === undefined,
    )
    await e.store.put('workload/web', { ...w, replicas: 1, stopped: true })
    await until('none', () => e.runtime.containers.size === 0)
    await e.store.put('workload/web', { ...w, replicas: 2 })
    await until('two again', () => e.runtime.containers.size === 2)
    await e.store.delete('workload/web')
    await until(
      'none after rm',
      () => e.runtime.containers.size === 0 && e.store.list('status/').length === 0,
    )
  })

  it('replaces replicas of a changed spec one at a time', async () => {
    const e = await setup({ peers: 0 })
    const w = normalizeWorkload({ name: 'web', replicas: 3, command: ['/bin/true'] })
    await e.store.put('workload/web', w)
    await until('three', () => e.runtime.containers.size === 3 && e.store.list('status/').length === 3)
    let worst = 0
    const watch = setInterval(() => {
      worst = Math.max(
        worst,
        3 - [...e.runtime.containers.values()].filter((c) => c.state === 'running').length,
      )
    }, 1)
    await e.store.put('workload/web', { ...w, env: { V: '2' } })
    await until('all on the new version', () =>
      ['web-0', 'web-1', 'web-2'].every(
        (c) => e.runtime.containers.get(c)?.spec.processes[0]?.env?.V === '2',
      ),
    )
    clearInterval(watch)
    assert.ok(worst <= 1)
    assert.equal(e.runtime.removes, 3)
  })

  it('makes a replica again, after a pause, when the runtime could not make it', async () => {
    const e = await setup({ peers: 0 })
    e.runtime.failNext = true
    await e.store.put('workload/web', normalizeWorkload({ name: 'web', command: ['/bin/true'] }))
    await until('a failed status', () => statusOf(e, 'web-0')?.state === 'failed')
    assert.match(statusOf(e, 'web-0')?.reason ?? '', /could not be made/)
    await new Promise((r) => setTimeout(r, 100))
    assert.equal(e.runtime.creates, 1, 'no retry at once')
    e.clock.now += 6_000
    await until('running after the retry', () => statusOf(e, 'web-0')?.state === 'running')
    assert.equal(e.runtime.creates, 2)
  })

  it('leaves containers that are not replicas alone, and says why a replica waits', async () => {
    const e = await setup({ peers: 0 })
    await e.runtime.create({ name: 'mine', processes: [{ name: 'main', args: ['/bin/true'] }] })
    await e.store.put(
      'workload/app',
      normalizeWorkload({ name: 'app', artifact: 'hello:1', command: ['/app/hello'] }),
    )
    await until('a waiting status', () => statusOf(e, 'app-0')?.state === 'waiting')
    assert.match(statusOf(e, 'app-0')?.reason ?? '', /no artifacts subsystem/)
    assert.ok(e.runtime.containers.has('mine'))
  })

  it('pulls the artifact for its arch first and binds its directory', async () => {
    const calls: string[] = []
    const artifacts: ArtifactSource = {
      ensure: async (ref, arch) => {
        calls.push(`${ref}/${arch}`)
        return { cid: 'bafy', dir: '/var/lib/km1s/artifacts/bafy' }
      },
      arches: () => ['amd64'],
    }
    const e = await setup({ peers: 0, artifacts })
    await e.store.put(
      'workload/app',
      normalizeWorkload({ name: 'app', artifact: 'hello:1', command: ['/app/hello'] }),
    )
    await until('running', () => statusOf(e, 'app-0')?.state === 'running')
    assert.deepEqual(calls, ['hello:1/amd64'])
    assert.equal(e.runtime.containers.get('app-0')?.spec.artifactDir, '/var/lib/km1s/artifacts/bafy')
  })
})
