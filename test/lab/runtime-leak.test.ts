// The leak test (issue 4): kill -9 the agent 30 times at random moments while containers are being created
// and removed, start it once more, and check that exactly the wanted containers exist and nothing else —
// namespaces, veths, cgroups, mounts, OCI state, processes.
import assert from 'node:assert/strict'
import { readdirSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { vethName } from '../../src/network/container-net.ts'
import { instanceId, SHIMS_CGROUP } from '../../src/runtime/names.ts'
import { km1s, km1sOk, startAgent } from './cluster.ts'
import { createLab, type Lab, type LabNode } from './lab.ts'
import { census, isRoot, sleep, until } from './runtime-fixture.ts'

const ROUNDS = Number(process.env.KM1S_LEAK_ROUNDS ?? 30)
const POOL = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5']

interface Row {
  name: string
  state: string
  processes: Array<{ name: string; state: string; pid: number | null }>
}

describe('runtime leak test: kill -9 during create and remove', {
  skip: isRoot ? false : 'needs root',
}, () => {
  let lab: Lab
  let node: LabNode
  let instance = ''
  const runDir = () => join(node.dataDir, '..', `${node.name}-run`)
  const start = () => startAgent(node, { runtime: 'oci' })
  const list = async (): Promise<Row[]> => JSON.parse(await km1sOk(node, ['containers', '--json']))

  before(async () => {
    lab = await createLab({ nodes: 1, name: 'leak' })
    node = lab.node(1)
    await km1sOk(node, ['init', '--name', node.name])
    await start()
    instance = instanceId(JSON.parse(await km1sOk(node, ['status', '--json'])).id)
  })

  after(async () => {
    try {
      if (node && instance) {
        // Whatever happened: nothing wanted, one start to sweep, then stop.
        await node.kill('SIGKILL')
        await import('node:fs/promises').then((fs) =>
          fs.rm(join(node.dataDir, 'runtime', 'containers'), { recursive: true, force: true }),
        )
        await start()
        await node.stop()
      }
    } finally {
      await lab?.down()
    }
    if (instance) {
      const left = census(instance, runDir())
      assert.deepEqual(Object.values(left).flat(), [], `leftovers: ${JSON.stringify(left)}`)
    }
  })

  it(`survives ${ROUNDS} kills and ends with exactly the wanted containers`, async () => {
    let seed = 42
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed / 2 ** 31
    }
    for (let round = 0; round < ROUNDS; round++) {
      if (node.pid() === undefined) await start()
      // Fire creates and removes without waiting, then kill at a random moment among them.
      const ops: Array<Promise<unknown>> = []
      for (let i = 0; i < 3; i++) {
        const name = POOL[Math.floor(random() * POOL.length)] as string
        const spec = join(lab.dir, `${name}-${round}-${i}.json`)
        await writeFile(
          spec,
          JSON.stringify({
            name,
            processes: [
              { name: 'main', args: ['/bin/sh', '-c', 'exec sleep 600'] },
              { name: 'side', args: ['/bin/sh', '-c', 'while :; do sleep 1; done'] },
            ],
          }),
        )
        ops.push(
          random() < 0.6
            ? km1s(node, ['containers', 'create', '-f', spec])
            : km1s(node, ['containers', 'rm', name]),
        )
      }
      await sleep(Math.floor(random() * 400))
      await node.kill('SIGKILL')
      await Promise.allSettled(ops)
    }
    await start()
    const wanted = readdirSync(join(node.dataDir, 'runtime', 'containers'))
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .sort()
    const rows = await until(
      'every wanted container running',
      async () => {
        const r = await list()
        return r.length === wanted.length && r.every((c) => c.state === 'running') ? r : undefined
      },
      20_000,
    )
    assert.deepEqual(rows.map((r) => r.name).sort(), wanted)
    const c = census(instance, runDir(), node.netns)
    const inst = `km1s-${instance}`
    assert.deepEqual(c.netns.sort(), wanted.map((w) => `${inst}-${w}`).sort(), 'network namespaces')
    assert.deepEqual(c.veths.sort(), wanted.map((w) => vethName(instance, w)).sort(), 'veths')
    assert.deepEqual(
      c.oci.sort(),
      wanted.flatMap((w) => [`${inst}-${w}.main`, `${inst}-${w}.side`]).sort(),
      'OCI state',
    )
    // Containers' cgroups, and their supervisors' beside them under `_shims` (names.ts shimCgroup).
    const cgroupContainers = new Set<string>()
    const shimCgroups = new Set<string>()
    const subdirs = (dir: string) =>
      readdirSync(dir, { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name)
    for (const hierarchy of new Set(c.cgroups.map((p) => p.split('/')[0]))) {
      const dir = `/sys/fs/cgroup/${hierarchy}/${inst}`
      for (const name of subdirs(dir)) {
        if (name === SHIMS_CGROUP) for (const s of subdirs(join(dir, name))) shimCgroups.add(s)
        else cgroupContainers.add(name)
      }
    }
    assert.deepEqual([...cgroupContainers].sort(), wanted, 'cgroups')
    assert.deepEqual([...shimCgroups].sort(), wanted, 'supervisor cgroups')
    // One namespace mount per container, and the mount namespace new containers' cruns share (detect.ts
    // makeCrunNamespace) while any container is wanted.
    const netnsMounts = c.mounts.filter((m) => !m.includes('/_crun.mnt '))
    assert.deepEqual(netnsMounts.length, wanted.length, `mounts: ${c.mounts.join('; ')}`)
    assert.ok(c.mounts.length - netnsMounts.length <= 1, `mounts: ${c.mounts.join('; ')}`)
    // One shim per process and nothing else of ours that is not a wanted container's.
    const shims = c.processes.filter((p) => p.includes('km1s-shim'))
    assert.equal(shims.length, wanted.length * 2, shims.join('\n'))
    for (const w of wanted) assert.ok(shims.some((p) => p.includes(`/${w}/main`)))
    // Every process of every wanted container is one live process, not two.
    for (const r of rows) assert.ok(r.processes.every((p) => p.state === 'running' && p.pid !== null))
    for (const w of wanted) await km1sOk(node, ['containers', 'rm', w])
    assert.deepEqual(await list(), [])
    const empty = census(instance, runDir(), node.netns)
    assert.deepEqual(empty, { netns: [], veths: [], cgroups: [], oci: [], mounts: [], processes: [] })
  })
})
