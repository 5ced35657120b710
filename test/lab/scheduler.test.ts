// Workloads as a user meets them on 5 real nodes: `km1s run` from n3 puts HTTP servers on several nodes
// that answer by container IP; a manifest round-trips; an arch filter holds; a node killed with -9 has its
// replicas replaced; a partition runs every replica on each side and the heal stops only the surplus,
// never restarting a replica that stays where it runs; `--exclusive` runs on the majority side only; a
// node that restarts with no peer reachable starts its replicas from its own store.
import assert from 'node:assert/strict'
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { ReplicaView } from '../../src/api/schemas.ts'
import { agentArgs, type Cluster, km1s, km1sOk, startAgent, startCluster, waitForAlive } from './cluster.ts'
import type { LabNode } from './lab.ts'
import { waitFor } from './lab.ts'
import { isRoot } from './runtime-fixture.ts'

const WEB = [
  '--port',
  '8080',
  '--memory',
  '64Mi',
  '--',
  '/usr/bin/python3',
  '-m',
  'http.server',
  '8080',
  '-d',
  '/tmp',
]

async function ps(node: LabNode, workload?: string): Promise<ReplicaView[]> {
  const rows = JSON.parse(await km1sOk(node, ['ps', '--json'])) as ReplicaView[]
  return workload ? rows.filter((r) => r.workload === workload) : rows
}

const running = (rows: ReplicaView[]) => rows.filter((r) => r.state === 'running')
const indices = (rows: ReplicaView[]) => [...new Set(running(rows).map((r) => r.index))].sort()
const show = (rows: ReplicaView[]) => rows.map((r) => `${r.name}@${r.node}:${r.state}`).join(' ')

/** Waits until `node` sees exactly one running replica per index 0..n-1 of `workload`, and no other. */
async function waitExactly(
  node: LabNode,
  workload: string,
  n: number,
  timeoutMs = 30_000,
): Promise<ReplicaView[]> {
  return waitFor(
    `${node.name} to see exactly ${n} running ${workload} replicas`,
    async () => {
      const rows = await ps(node, workload)
      const up = running(rows)
      if (rows.length === n && up.length === n && indices(rows).join() === [...Array(n).keys()].join())
        return rows
      throw new Error(show(rows))
    },
    { timeoutMs, intervalMs: 200 },
  )
}

describe('scheduler on 5 nodes', { skip: isRoot ? false : 'needs root' }, () => {
  let cluster: Cluster
  let nodes: LabNode[]
  const node = (name: string) => nodes.find((n) => n.name === name) as LabNode

  async function httpStatus(row: ReplicaView): Promise<string> {
    const r = await node(row.node).exec(
      ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '3', `http://${row.ip}:8080/`],
      { timeoutMs: 10_000 },
    )
    return r.stdout.trim()
  }

  before(async () => {
    cluster = await startCluster(5, { name: 'sched', agent: { runtime: 'oci' } })
    nodes = cluster.nodes
    await waitForAlive(nodes, nodes)
  })

  after(async () => {
    try {
      // Workloads go, their containers with them; an agent's stop leaves containers running by design.
      for (const w of ['web', 'excl', 'armapp']) await km1s(nodes[0] as LabNode, ['rm', w])
      await Promise.all(
        nodes.map((n) =>
          waitFor(
            `${n.name} to have no containers`,
            async () => {
              if (n.pid() === undefined) return true
              return JSON.parse(await km1sOk(n, ['containers', '--json'])).length === 0
            },
            { timeoutMs: 30_000, intervalMs: 200 },
          ).catch((err) => console.error(String(err))),
        ),
      )
    } finally {
      await cluster?.lab.down()
    }
  })

  it('runs from n3 on several nodes, each replica answering HTTP by its IP from its node', async () => {
    const out = await km1sOk(node('n3'), ['run', 'web', '--replicas', '3', '--wait', ...WEB])
    assert.match(out, /Workload web: 3 replicas running/)
    const rows = await waitExactly(node('n1'), 'web', 3)
    assert.ok(new Set(rows.map((r) => r.node)).size >= 2, show(rows))
    for (const r of rows) {
      assert.match(r.ip ?? '', /^10\.42\.\d+\.\d+$/)
      assert.match(r.name, /^web-[0-2]$/)
      assert.equal(
        await waitFor(`${r.name} to answer HTTP`, async () => (await httpStatus(r)) === '200' && '200'),
        '200',
      )
    }
    // Every node shows the same cluster-wide list.
    for (const n of nodes) await waitExactly(n, 'web', 3)
    const table = await km1sOk(node('n5'), ['ps'])
    assert.match(table, /NAME\s+WORKLOAD\s+NODE\s+STATE\s+IP\s+UPTIME\s+RESTARTS/)
    assert.match(table, /web-0\s+web\s+n\d\s+running\s+10\.42\.\d+\.\d+/)
  })

  it('round-trips get -o yaml through apply without touching the replicas; a bad manifest names the field', async () => {
    const before = await ps(node('n1'), 'web')
    const yaml = await km1sOk(node('n2'), ['get', 'web', '-o', 'yaml'])
    assert.match(yaml, /kind: Workload\nname: web\n/)
    const file = join(cluster.lab.dir, 'web.yaml')
    await writeFile(file, yaml)
    await km1sOk(node('n4'), ['apply', '-f', file])
    assert.equal(await km1sOk(node('n1'), ['get', 'web', '-o', 'yaml']), yaml)
    const bad = join(cluster.lab.dir, 'bad.yaml')
    await writeFile(bad, `${yaml}---\nname: other\ncommand: [/bin/true]\nreplicas: lots\n`)
    const r = await km1s(node('n4'), ['apply', '-f', bad])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr.trim(), /^\S*bad\.yaml document 2: replicas must be/)
    assert.equal(r.stderr.trim().split('\n').length, 1)
    assert.equal((await km1s(node('n1'), ['get', 'other'])).code, 1, 'nothing of a bad file is applied')
    const now = await ps(node('n1'), 'web')
    assert.deepEqual(
      now.map((x) => [x.name, x.node, x.restarts]),
      before.map((x) => [x.name, x.node, x.restarts]),
    )
    const runBad = await km1s(node('n1'), ['run', 'Bad_Name', '--', '/bin/true'])
    assert.match(runBad.stderr, /name must be lowercase/)
  })

  it('respects an arch filter: a node labelled arm64 gets every arm64 replica', async () => {
    await km1sOk(node('n1'), ['label', 'n2', 'km1s.io/arch=arm64'])
    await km1sOk(node('n1'), [
      'run',
      'armapp',
      '--arch',
      'arm64',
      '--replicas',
      '2',
      '--wait',
      '--',
      '/bin/sleep',
      '600',
    ])
    const rows = await waitExactly(node('n4'), 'armapp', 2)
    assert.deepEqual(
      rows.map((r) => r.node),
      ['n2', 'n2'],
    )
    const nowhere = await km1s(node('n3'), [
      'run',
      'armapp2',
      '--arch',
      'riscv64',
      '--wait',
      '--timeout',
      '2',
      '--',
      '/bin/true',
    ])
    assert.notEqual(nowhere.code, 0)
    assert.match(nowhere.stderr.trim(), /^armapp2-0 cannot be placed: no live node matches arch riscv64\.$/)
    assert.match(
      await km1sOk(node('n3'), ['get']),
      /armapp2\s+0\/1\s+-\s+\/bin\/true\s+1 unplaced: no live node matches arch riscv64/,
    )
    await km1sOk(node('n1'), ['rm', 'armapp2'])
    await km1sOk(node('n1'), ['rm', 'armapp'])
    await waitFor('armapp to be gone', async () => (await ps(node('n1'), 'armapp')).length === 0, {
      timeoutMs: 20_000,
    })
    await km1sOk(node('n1'), ['label', 'n2', 'km1s.io/arch-'])
  })

  it('runs an artifact from /app: pushed on one node, pulled by the nodes its replicas land on', async () => {
    const dir = join(cluster.lab.dir, 'hello-app')
    await rm(dir, { recursive: true, force: true })
    await mkdir(dir)
    await writeFile(join(dir, 'hello.sh'), '#!/bin/sh\necho "hello $1 from $(hostname)"\nexec sleep 600\n', {
      mode: 0o755,
    })
    await km1sOk(node('n1'), ['push', dir, '--name', 'hello:1'])
    await km1sOk(node('n3'), [
      'run',
      'art',
      '--artifact',
      'hello:1',
      '--replicas',
      '2',
      '--wait',
      '--',
      '/app/hello.sh',
      'tag',
    ])
    // A local path is pushed first and run by its CID.
    await km1sOk(node('n4'), [
      'run',
      'artpath',
      '--artifact',
      dir,
      '--replicas',
      '2',
      '--wait',
      '--',
      '/app/hello.sh',
      'path',
    ])
    for (const [w, word] of [
      ['art', 'tag'],
      ['artpath', 'path'],
    ] as const) {
      const rows = await waitExactly(node('n2'), w, 2)
      assert.ok(new Set(rows.map((r) => r.node)).size === 2, show(rows))
      for (const r of rows)
        await waitFor(`${r.name} to say hello`, async () => {
          const out = await km1sOk(node('n5'), ['logs', r.name])
          return out.includes(`hello ${word} from ${r.name}`)
        })
    }
    assert.match(await km1sOk(node('n5'), ['get', 'artpath']), /artpath/)
    await km1sOk(node('n3'), ['rm', 'art'])
    await km1sOk(node('n3'), ['rm', 'artpath'])
  })

  it('scales up and down, and stop keeps the workload', async () => {
    await km1sOk(node('n2'), ['scale', 'web', '4'])
    await waitExactly(node('n1'), 'web', 4)
    await km1sOk(node('n2'), ['scale', 'web', '3'])
    await waitExactly(node('n1'), 'web', 3)
    await km1sOk(node('n1'), ['run', 'excl', '--exclusive', '--replicas', '1', '--', '/bin/sleep', '600'])
    await waitExactly(node('n1'), 'excl', 1)
    await km1sOk(node('n1'), ['stop', 'excl'])
    await waitFor('excl to stop', async () => (await ps(node('n1'), 'excl')).length === 0, {
      timeoutMs: 20_000,
    })
    assert.match(await km1sOk(node('n1'), ['get']), /excl\s+stopped/)
    await km1sOk(node('n1'), ['scale', 'excl', '1'])
    await waitExactly(node('n1'), 'excl', 1)
  })

  it('rolls a changed spec out one replica at a time', async () => {
    const old = await waitExactly(node('n1'), 'web', 3)
    let sampling = true
    let worst = 0
    const samples = (async () => {
      while (sampling) {
        const rows = await ps(node('n1'), 'web')
        worst = Math.max(worst, 3 - indices(rows).length)
        await new Promise((r) => setTimeout(r, 50))
      }
    })()
    try {
      await km1sOk(node('n2'), ['run', 'web', '--replicas', '3', '--env', 'VERSION=2', '--wait', ...WEB])
    } finally {
      sampling = false
      await samples
    }
    const rows = await waitExactly(node('n1'), 'web', 3)
    assert.ok(
      rows.every((r) => r.current && r.spec !== old[0]?.spec),
      show(rows),
    )
    assert.ok(worst <= 1, `${worst} replicas were down at once`)
    for (const r of rows)
      assert.equal(
        await waitFor(`${r.name} to answer`, async () => (await httpStatus(r)) === '200' && '200'),
        '200',
      )
  })

  it('replaces the replicas of a node killed with -9, and that node stops its surplus when it is back', async (t) => {
    const rows = await ps(node('n1'), 'web')
    const victim = node(rows.find((r) => r.node !== 'n1')?.node as string)
    const t0 = Date.now()
    await victim.kill('SIGKILL')
    await waitFor(
      'web to run 3 replicas on live nodes',
      async () => {
        const live = running(await ps(node('n1'), 'web')).filter((r) => r.node !== victim.name)
        if (indices(live).length === 3) return true
        throw new Error(show(live))
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    )
    t.diagnostic(`replacement running ${Date.now() - t0} ms after kill -9 of ${victim.name}`)
    await waitFor(`${victim.name}'s replicas to show as unknown`, async () =>
      (await ps(node('n1'), 'web')).filter((r) => r.node === victim.name).every((r) => r.state === 'unknown'),
    )
    await startAgent(victim, { runtime: 'oci', extraArgs: agentArgs(victim) })
    await waitForAlive(nodes, nodes)
    await waitExactly(node('n1'), 'web', 3)
    // Its own containers follow: only what placement gives it.
    const mine = (await ps(victim, 'web')).filter((r) => r.node === victim.name).map((r) => r.name)
    await waitFor(`${victim.name} to run only its assigned replicas`, async () => {
      const local = JSON.parse(await km1sOk(victim, ['containers', '--json'])) as Array<{ name: string }>
      return (
        local
          .map((c) => c.name)
          .filter((c) => c.startsWith('web-'))
          .sort()
          .join() === mine.sort().join()
      )
    })
  })

  it('runs every replica on each side of a partition, and the heal stops only the surplus', async () => {
    await waitExactly(node('n1'), 'web', 3)
    const a = [node('n1'), node('n2')]
    const b = [node('n3'), node('n4'), node('n5')]
    await cluster.lab.partition(a, b)
    await waitForAlive(a, a, 30_000)
    await waitForAlive(b, b, 30_000)
    for (const side of [a, b]) {
      const names = new Set(side.map((n) => n.name))
      // Settled: each replica exactly once on this side, the same placement twice 1 s apart. A side may
      // move a replica within itself first (placement has no memory, docs/scheduler.md); what the heal
      // must not restart is what runs once the side has settled.
      let last = ''
      await waitFor(
        `${side[0]?.name}'s side to run every replica, settled`,
        async () => {
          const rows = (await ps(side[0] as LabNode, 'web')).filter((r) => names.has(r.node))
          const placement = show(rows.slice().sort((x, y) => (x.name < y.name ? -1 : 1)))
          const settled = indices(rows).length === 3 && rows.length === 3 && running(rows).length === 3
          const same = placement === last
          last = placement
          if (settled && same) return true
          throw new Error(placement)
        },
        { timeoutMs: 30_000, intervalMs: 1_000 },
      )
    }
    // exclusive: only the majority side (3 of 5) runs it.
    await waitFor('excl on the majority side only', async () => {
      const minority = (await ps(node('n1'), 'excl')).filter((r) => ['n1', 'n2'].includes(r.node))
      const majority = (await ps(node('n4'), 'excl')).filter((r) => ['n3', 'n4', 'n5'].includes(r.node))
      return minority.length === 0 && running(majority).length === 1
    })
    // What each side runs just before the heal, as that side sees it.
    const survivors: ReplicaView[] = []
    for (const side of [a, b]) {
      const names = new Set(side.map((n) => n.name))
      survivors.push(...running(await ps(side[0] as LabNode, 'web')).filter((r) => names.has(r.node)))
    }
    await cluster.lab.heal()
    await waitForAlive(nodes, nodes, 30_000)
    const healed = await waitExactly(node('n1'), 'web', 3)
    await waitExactly(node('n1'), 'excl', 1)
    // The heal stopped only the surplus: a replica still placed where it ran was not restarted.
    for (const s of survivors) {
      const now = healed.find((r) => r.name === s.name && r.node === s.node)
      if (!now) continue
      assert.equal(now.restarts, s.restarts, `${s.name} on ${s.node} restarted`)
      assert.ok((now.uptime ?? 0) >= (s.uptime ?? 0), `${s.name} on ${s.node} was started again`)
    }
    assert.ok(
      survivors.some((s) => healed.some((r) => r.name === s.name && r.node === s.node)),
      'some replica kept its place',
    )
  })

  it('starts its replicas from its own store when it restarts with no peer reachable', async () => {
    const n5 = node('n5')
    const others = nodes.filter((n) => n !== n5)
    await cluster.lab.partition([n5], others)
    await n5.stop()
    // A cold boot: the containers are gone with the reboot (their runtime records with them).
    const records = join(n5.dataDir, 'runtime', 'containers')
    for (const f of await readdir(records).catch(() => [])) await rm(join(records, f), { force: true })
    await startAgent(n5, { runtime: 'oci', extraArgs: agentArgs(n5) })
    await waitFor(
      'n5 alone to run every web replica',
      async () => {
        const rows = running(await ps(n5, 'web')).filter((r) => r.node === 'n5')
        if (indices(rows).length === 3) return true
        throw new Error(show(await ps(n5, 'web')))
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    )
    for (const r of running(await ps(n5, 'web')).filter((x) => x.node === 'n5'))
      assert.equal(
        await waitFor(`${r.name} to answer`, async () => (await httpStatus(r)) === '200' && '200'),
        '200',
      )
    await cluster.lab.heal()
    await waitForAlive(nodes, nodes, 30_000)
    await waitExactly(node('n1'), 'web', 3)
  })
})
