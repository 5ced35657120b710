// Artifacts end to end (issue 5): six real agents. A 50 MB push on n1 pulled at once by n2..n5, byte for
// byte; n1 killed mid-pull while the others finish from each other; a hostile peer (an agent started with
// the test-only KM1S_TEST_CORRUPT_BLOCKS=1) detected and the pull completed elsewhere; bad input (unknown
// tag, unknown CID, a socket, a full quota) refused clearly; gc keeps what tags refer to.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { rm, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { instanceId } from '../../src/runtime/names.ts'
import {
  agentArgs,
  type Cluster,
  client,
  km1s,
  km1sOk,
  MESH_PORT,
  startAgent,
  startCluster,
  waitForAlive,
} from './cluster.ts'
import { type LabNode, waitFor } from './lab.ts'
import { census } from './runtime-fixture.ts'

const isRoot = process.getuid?.() === 0
const MB = 1_000_000

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return h.digest('hex')
}

/** A file of `size` random bytes in the lab's directory; its sha256. */
async function randomFile(path: string, size: number): Promise<string> {
  const buf = randomBytes(size)
  await writeFile(path, buf)
  return createHash('sha256').update(buf).digest('hex')
}

interface PullJson {
  cid: string
  badBlocks: number
  peers: number
  output: string | null
}

async function pullTo(node: LabNode, ref: string, out: string): Promise<PullJson> {
  return JSON.parse(await km1sOk(node, ['--json', 'pull', ref, '-o', out, '--arch', 'any'])) as PullJson
}

describe('artifacts: push once, pull anywhere', { skip: !isRoot && 'the lab needs root' }, () => {
  let c: Cluster
  let n: LabNode[]
  let files: string

  before(async () => {
    c = await startCluster(6, { name: 'artif' })
    n = [...c.nodes]
    files = c.lab.dir
    await waitForAlive(n, n)
  })
  after(async () => {
    await c?.lab.down()
  })
  const node = (i: number): LabNode => {
    const x = n[i - 1]
    assert.ok(x, `node ${i}`)
    return x
  }

  it('a 50 MB push on n1 is pulled by n2..n5 at once, byte-identical everywhere', async () => {
    const src = join(files, 'big1.bin')
    const want = await randomFile(src, 50 * MB)
    const pushed = (await km1sOk(node(1), ['push', src, '--name', 'big:1'])).trim().split('\n').at(-1)
    const results = await Promise.all(
      [2, 3, 4, 5].map((i) => pullTo(node(i), 'big:1', join(files, `big1-n${i}.out`))),
    )
    for (const [k, r] of results.entries()) {
      assert.equal(r.cid, pushed)
      assert.equal(await sha256(join(files, `big1-n${k + 2}.out`)), want, `n${k + 2}'s copy`)
    }
    const list = JSON.parse(await km1sOk(node(3), ['--json', 'artifacts'])) as Array<{
      name: string
      local: boolean
      arch: string
    }>
    assert.deepEqual(
      list.map((a) => [a.name, a.arch, a.local]),
      [['big', 'any', true]],
    )
    // The pullers served each other: n1 uploaded less than the four copies it would have sent alone.
    const status = await client(node(1)).artifactsStatus()
    assert.ok(status.bytesServed < 4 * 50 * MB, `n1 served ${status.bytesServed} bytes`)
    // ...over fast lanes beside libp2p (bulk.ts), not over the libp2p streams.
    assert.ok(status.fastLanes > 0, 'n1 served over fast lanes')
  })

  it('n1 killed -9 mid-pull: n3..n5 finish from the peers that hold the chunks', async () => {
    const src = join(files, 'big2.bin')
    const want = await randomFile(src, 50 * MB)
    await km1sOk(node(1), ['push', src, '--name', 'big:2'])
    await pullTo(node(2), 'big:2', join(files, 'big2-n2.out'))
    const ctl = new AbortController()
    let killedAt: number[] | undefined
    const progress = new Map<number, number>()
    const pulls = [3, 4, 5].map(async (i) => {
      for await (const e of client(node(i)).pull({ ref: 'big:2', arch: 'any', checkout: true }, ctl.signal)) {
        progress.set(i, e.bytes)
        if (e.t === 'progress' && !killedAt && e.bytes > 0) {
          killedAt = [3, 4, 5].map((j) => progress.get(j) ?? 0)
          await node(1).kill('SIGKILL')
        }
        if (e.t === 'error') throw new Error(`n${i}: ${e.message}`)
        if (e.t === 'done') return e.result
      }
      throw new Error(`n${i}'s pull ended without a result`)
    })
    const results = await Promise.all(pulls)
    ctl.abort()
    assert.ok(killedAt, 'n1 was killed during the pulls')
    assert.ok(
      killedAt.some((b) => b < 50 * MB),
      `killed with progress ${killedAt?.join(',')}`,
    )
    for (const r of results) {
      assert.ok(r?.dir)
      assert.equal(await sha256(join(r.dir, 'big2.bin')), want)
    }
    await startAgent(node(1), { extraArgs: agentArgs(node(1)) })
    await waitForAlive(n, n)
  })

  it('a peer serving corrupt blocks is detected and banned; the pull completes from the others', async () => {
    const hostile = node(6)
    await hostile.stop()
    await startAgent(hostile, { extraArgs: agentArgs(hostile), env: { KM1S_TEST_CORRUPT_BLOCKS: '1' } })
    await waitForAlive(n, n)
    const src = join(files, 'small.bin')
    const want = await randomFile(src, 16 * MB)
    await km1sOk(node(1), ['push', src, '--name', 'small:1'])
    // The hostile node checks what it receives like any node, so it holds correct blocks; it lies only when serving.
    await pullTo(hostile, 'small:1', join(files, 'small-n6.out'))
    assert.equal(await sha256(join(files, 'small-n6.out')), want)
    const r = await pullTo(node(2), 'small:1', join(files, 'small-n2.out'))
    assert.equal(await sha256(join(files, 'small-n2.out')), want)
    assert.ok(r.badBlocks >= 1, `n2 saw ${r.badBlocks} corrupt blocks`)
    const s = await client(node(2)).artifactsStatus()
    assert.ok(s.bannedPeers >= 1)
    assert.match(await km1sOk(node(2), ['artifacts', 'status']), /PEERS BANNED\n.*\s[1-9]\d*$/m)
    assert.ok(s.badBlocksReceived >= 1)
  })

  it('bad input: unknown tag and CID fail clearly within seconds, a socket is refused, a full quota says so', async () => {
    let t = Date.now()
    const unknown = await km1s(node(2), ['pull', 'nosuch:1'])
    assert.notEqual(unknown.code, 0)
    assert.match(unknown.stderr, /No artifact is tagged nosuch:1/)
    assert.ok(Date.now() - t < 5000, 'an unknown tag answers at once')
    t = Date.now()
    const missingCid = 'bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq'
    const unavailable = await km1s(node(2), ['pull', missingCid])
    assert.notEqual(unavailable.code, 0)
    assert.match(unavailable.stderr, /No reachable node holds/)
    assert.ok(Date.now() - t < 15_000, 'an unknown CID fails, never hangs')

    const sock = join(files, 'a.sock')
    const server = createServer()
    await new Promise<void>((r) => server.listen(sock, r))
    try {
      const r = await km1s(node(2), ['push', sock, '--name', 'sock:1'])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /refuses sockets/)
    } finally {
      server.close()
    }
    const dev = await km1s(node(2), ['push', '/dev/zero', '--name', 'dev:1'])
    assert.match(dev.stderr, /refuses sockets, FIFOs and devices/)

    // n5 restarted with a 20 MB quota cannot hold a new 50 MB artifact: a clear error, nothing torn.
    const five = node(5)
    await five.stop()
    await startAgent(five, { extraArgs: agentArgs(five), env: { KM1S_ARTIFACTS_QUOTA: '120M' } })
    await waitForAlive(n, n)
    const src = join(files, 'big3.bin')
    await randomFile(src, 50 * MB)
    await km1sOk(node(1), ['push', src, '--name', 'big:3'])
    const before = (await client(five).artifactsStatus()).bytes
    const full = await km1s(five, ['pull', 'big:3', '--arch', 'any'])
    assert.notEqual(full.code, 0)
    assert.match(full.stderr, /artifact store is full/)
    const s = await client(five).artifactsStatus()
    assert.ok(s.bytes <= s.quota)
    const list = JSON.parse(await km1sOk(five, ['--json', 'artifacts'])) as Array<{
      name: string
      tag: string
      local: boolean
    }>
    const big1 = list.find((a) => a.name === 'big' && a.tag === '1')
    assert.equal(big1?.local, true, 'what n5 held before is intact')

    // With the quota raised the interrupted pull resumes: the chunks it kept are not fetched again.
    const kept = s.bytes - before
    assert.ok(kept > 0, 'the failed pull kept the chunks it had fetched')
    await five.stop()
    await startAgent(five, { extraArgs: agentArgs(five) })
    await waitForAlive(n, n)
    const others = n.filter((x) => x !== five)
    const servedBefore = await Promise.all(
      others.map(async (x) => (await client(x).artifactsStatus()).bytesServed),
    )
    await km1sOk(five, ['pull', 'big:3', '--arch', 'any'])
    const servedAfter = await Promise.all(
      others.map(async (x) => (await client(x).artifactsStatus()).bytesServed),
    )
    const fetched = servedAfter.reduce((sum, b, i) => sum + b - (servedBefore[i] ?? 0), 0)
    assert.ok(fetched <= 50 * MB - kept + 2 ** 20, `fetched ${fetched} bytes after keeping ${kept}`)
  })

  it('a provider whose fast-lane port is firewalled still serves, over its libp2p stream', async () => {
    const walled = node(2)
    // Drop every inbound TCP connection to n2 but the mesh's own port: the lane's port is unreachable.
    const rules = `table inet laneblock {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport != ${MESH_PORT} ct state new drop
  }
}
`
    const put = await walled.exec(['sh', '-c', `printf '%s' '${rules}' | nft -f -`])
    assert.equal(put.code, 0, put.stderr)
    try {
      const src = join(files, 'walled.bin')
      const want = await randomFile(src, 8 * MB)
      await km1sOk(walled, ['push', src, '--name', 'walled:1'])
      const lanesBefore = (await client(walled).artifactsStatus()).fastLanes
      const r = await pullTo(node(3), 'walled:1', join(files, 'walled-n3.out'))
      assert.equal(await sha256(join(files, 'walled-n3.out')), want)
      assert.equal(r.badBlocks, 0)
      assert.equal((await client(walled).artifactsStatus()).fastLanes, lanesBefore, 'no lane reached n2')
    } finally {
      await walled.exec(['nft', 'delete', 'table', 'inet', 'laneblock'])
    }
  })

  it('gc keeps what tags refer to and removes the rest', async () => {
    const two = node(2)
    const before = await client(two).artifactsStatus()
    const r = JSON.parse(await km1sOk(two, ['--json', 'artifacts', 'rm', 'big:2'])) as {
      removedTags: number
      freedBytes: number
    }
    assert.equal(r.removedTags, 1)
    assert.ok(r.freedBytes >= 50 * MB)
    // The tag's removal reaches n3, whose gc then frees its copy too; big:1 and small:1 stay whole.
    const three = node(3)
    await waitFor('the tag removal to reach n3', async () => {
      const list = JSON.parse(await km1sOk(three, ['--json', 'artifacts'])) as Array<{
        name: string
        tag: string
      }>
      return !list.some((a) => a.name === 'big' && a.tag === '2')
    })
    const gc = JSON.parse(await km1sOk(three, ['--json', 'artifacts', 'gc'])) as { freedBytes: number }
    assert.ok(gc.freedBytes >= 50 * MB)
    const list = JSON.parse(await km1sOk(three, ['--json', 'artifacts'])) as Array<{
      name: string
      tag: string
      local: boolean
    }>
    assert.equal(list.find((a) => a.name === 'big' && a.tag === '1')?.local, true)
    const after2 = await client(two).artifactsStatus()
    assert.ok(after2.bytes <= before.bytes - 50 * MB)
    await rm(join(files, 'big1.bin'), { force: true })
    assert.ok((await stat(join(files, 'small.bin'))).size > 0)
  })

  it('the runtime mounts a pulled artifact read-only at /app', async () => {
    const four = node(4)
    await four.stop()
    await startAgent(four, { runtime: 'oci', extraArgs: agentArgs(four) })
    await waitForAlive(n, n)
    const instance = instanceId((await client(four).status()).id)
    const runDir = join(four.dataDir, '..', `${four.name}-run`)
    const dir = join(files, 'app')
    await rm(dir, { recursive: true, force: true })
    await writeFile(join(files, 'hello.sh'), '#!/bin/sh\necho hello from the artifact\n')
    await km1sOk(node(1), ['push', join(files, 'hello.sh'), '--name', 'hello:1'])
    const ctl = new AbortController()
    let appDir: string | null = null
    let failure = ''
    for await (const e of client(four).pull({ ref: 'hello:1', checkout: true }, ctl.signal)) {
      if (e.t === 'done') appDir = e.result?.dir ?? null
      if (e.t === 'error') failure = `${e.code}: ${e.message}`
    }
    ctl.abort()
    assert.ok(appDir, `the pull checked the artifact out (${failure})`)
    try {
      await client(four).createContainer({
        name: 'app',
        artifactDir: appDir,
        processes: [
          {
            name: 'main',
            args: [
              '/bin/sh',
              '-c',
              '/bin/sh /app/hello.sh; touch /app/x 2>/dev/null || echo app-is-read-only; exec sleep 600',
            ],
          },
        ],
      })
      await waitFor('the artifact to run', async () => {
        const out = (await km1sOk(four, ['logs', 'app'])).trim()
        if (!/app-is-read-only/.test(out)) throw new Error(`logs: ${out}`)
        assert.match(out, /hello from the artifact/)
        return true
      })
    } finally {
      await km1s(four, ['containers', 'rm', 'app'])
      await four.stop()
    }
    const left = census(instance, runDir)
    assert.deepEqual(Object.values(left).flat(), [], JSON.stringify(left))
  })
})
