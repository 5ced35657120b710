// The artifact store on one node, with a real replicated Store and no peers: push (files, trees, arches,
// refusals), ensure's read-only checkout, gc of what no tag or workload refers to, the quota, and the
// blockstore's own checks (a damaged block is found and removed, a failed write leaves nothing behind).
import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Level } from 'level'
import { pino } from 'pino'
import { Artifacts, type ArtifactsInit } from '../../../src/artifacts/artifacts.ts'
import { FileBlockstore, resolveQuota } from '../../../src/artifacts/blockstore.ts'
import { CHUNK_BYTES, rawCid } from '../../../src/artifacts/cid.ts'
import { isKm1sError } from '../../../src/common/errors.ts'
import { normalizeWorkload } from '../../../src/scheduler/workload.ts'
import { Store, type WireRecord } from '../../../src/state/index.ts'

const silent = pino({ level: 'silent' })
const dirs: string[] = []
const cleanups: Array<() => Promise<unknown>> = []
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => undefined)
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'km1s-art-store-'))
  dirs.push(d)
  return d
}

const code = (c: string) => (e: unknown) => isKm1sError(e) && e.code === c

async function node(quota?: string): Promise<{ artifacts: Artifacts; store: Store; dir: string }> {
  const dir = await tempDir()
  const db = new Level<string, unknown>(join(dir, 'db'), { valueEncoding: 'json' })
  await db.open()
  const privateKey = await generateKeyPair('Ed25519')
  const store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey,
    logger: silent,
  })
  await store.load()
  const libp2p = {
    peerId: peerIdFromPrivateKey(privateKey),
    handle: async () => {},
    unhandle: async () => {},
    getPeers: () => [],
    dialProtocol: async () => {
      throw new Error('no peers here')
    },
    contentRouting: {
      provide: async () => {},
      findProviders: async function* () {},
    },
  } as unknown as ArtifactsInit['libp2p']
  const artifacts = new Artifacts({ dataDir: dir, store, libp2p, logger: silent, arch: 'amd64', quota })
  await artifacts.start()
  cleanups.push(async () => {
    await artifacts.stop()
    await store.stop()
    await db.close()
  })
  return { artifacts, store, dir }
}

function elf(machine: number, size: number): Uint8Array {
  const b = new Uint8Array(size).map((_, i) => (i * 31) & 0xff)
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0)
  new DataView(b.buffer).setUint16(18, machine, true)
  return b
}

describe('push, ensure, list', () => {
  let n: Awaited<ReturnType<typeof node>>
  let src: string
  before(async () => {
    n = await node()
    src = await tempDir()
    await writeFile(join(src, 'app-amd64'), elf(62, CHUNK_BYTES + 100))
    await writeFile(join(src, 'app-arm64'), elf(183, 5000))
    await mkdir(join(src, 'tree', 'bin'), { recursive: true })
    await writeFile(join(src, 'tree', 'bin', 'run'), '#!/bin/sh\necho hi\n')
    await chmod(join(src, 'tree', 'bin', 'run'), 0o755)
    await writeFile(join(src, 'tree', 'data'), new Uint8Array(3 * CHUNK_BYTES))
    await symlink('bin/run', join(src, 'tree', 'start'))
  })

  it('reads the arch of a single binary and adds arches side by side under one tag', async () => {
    const a = await n.artifacts.push(join(src, 'app-amd64'), 'app:1')
    const b = await n.artifacts.push(join(src, 'app-arm64'), 'app:1')
    assert.equal(a.arch, 'amd64')
    assert.equal(b.arch, 'arm64')
    assert.notEqual(a.cid, b.cid)
    assert.deepEqual(n.artifacts.arches('app:1'), ['amd64', 'arm64'])
    const list = await n.artifacts.list()
    assert.deepEqual(
      list.map((x) => [x.name, x.tag, x.arch, x.size, x.local]),
      [
        ['app', '1', 'amd64', CHUNK_BYTES + 100, true],
        ['app', '1', 'arm64', 5000, true],
      ],
    )
  })

  it('refuses an --arch that contradicts the ELF header, a socket, a relative path and a missing file', async () => {
    await assert.rejects(
      n.artifacts.push(join(src, 'app-amd64'), 'app:2', { arch: 'arm64' }),
      code('ERR_ARTIFACT_ARCH'),
    )
    const sock = join(src, 's.sock')
    const server = createServer()
    await new Promise<void>((r) => server.listen(sock, r))
    try {
      await assert.rejects(
        n.artifacts.push(sock, 'app:2'),
        (e) => code('ERR_ARTIFACT_PATH')(e) && /socket/.test(String(e)),
      )
    } finally {
      server.close()
    }
    await assert.rejects(n.artifacts.push('/dev/null', 'app:2'), code('ERR_ARTIFACT_PATH'))
    await assert.rejects(n.artifacts.push('relative/path', 'app:2'), code('ERR_ARTIFACT_PATH'))
    await assert.rejects(n.artifacts.push(join(src, 'nope'), 'app:2'), code('ERR_ARTIFACT_PATH'))
    await assert.rejects(n.artifacts.push(join(src, 'app-amd64'), 'Bad Name'), code('ERR_ARTIFACT_REF'))
    assert.equal(n.store.get('tag/app:2'), undefined)
  })

  it('ensure checks a tree out read-only with its modes and symlinks, and answers unknown refs at once', async () => {
    const pushed = await n.artifacts.push(join(src, 'tree'), 'tree:1')
    assert.equal(pushed.arch, 'any')
    assert.equal(pushed.files, 2)
    const { cid, dir } = await n.artifacts.ensure('tree:1', 'armv7')
    assert.equal(cid, pushed.cid)
    assert.equal(await readFile(join(dir, 'bin', 'run'), 'utf8'), '#!/bin/sh\necho hi\n')
    assert.equal((await stat(join(dir, 'bin', 'run'))).mode & 0o777, 0o555)
    assert.equal((await stat(join(dir, 'data'))).mode & 0o777, 0o444)
    assert.deepEqual(await readFile(join(dir, 'data')), Buffer.alloc(3 * CHUNK_BYTES))
    assert.equal(await readFile(join(dir, 'start'), 'utf8'), '#!/bin/sh\necho hi\n')
    assert.deepEqual(await n.artifacts.ensure(pushed.cid, 'amd64'), { cid, dir })
    const started = Date.now()
    await assert.rejects(n.artifacts.ensure('nope:1', 'amd64'), code('ERR_ARTIFACT_NOT_FOUND'))
    await assert.rejects(n.artifacts.ensure('app:1', 'armv7'), code('ERR_ARTIFACT_ARCH'))
    assert.ok(Date.now() - started < 1000)
  })
})

describe('gc and rm', () => {
  it('keeps what tags and workloads refer to and removes the rest, checkouts included', async () => {
    const n = await node()
    const src = await tempDir()
    for (const name of ['a', 'b', 'c'])
      await writeFile(join(src, name), `content of ${name}\n`.repeat(50_000))
    const a = await n.artifacts.push(join(src, 'a'), 'a:1')
    const b = await n.artifacts.push(join(src, 'b'), 'b:1')
    const c = await n.artifacts.push(join(src, 'c'), 'c:1')
    await n.artifacts.ensure('c:1', 'amd64')
    // A workload (the scheduler's record) refers to b by tag; then b's and c's tags go.
    await n.store.put(
      'workload/web',
      normalizeWorkload({ name: 'web', artifact: 'b:1', replicas: 1, command: ['/app/b'] }),
    )
    await n.store.delete('tag/c:1')
    const before = n.artifacts.stats().blocks
    const r = await n.artifacts.gc()
    assert.equal(r.keptRoots, 2)
    assert.ok(r.removedBlocks > 0 && r.freedBytes > 0)
    assert.equal(n.artifacts.stats().blocks, before - r.removedBlocks)
    assert.deepEqual(await readdir(join(n.dir, 'artifacts', 'checkout')), [])
    const local = Object.fromEntries((await n.artifacts.list()).map((x) => [x.name, x.local]))
    assert.deepEqual(local, { a: true, b: true })
    // Still whole: checkouts of a and b work from the blocks that are left.
    assert.ok((await n.artifacts.ensure(a.cid, 'amd64')).dir)
    assert.ok((await n.artifacts.ensure(b.cid, 'amd64')).dir)
    await assert.rejects(n.artifacts.ensure(c.cid, 'amd64'), code('ERR_ARTIFACT_UNAVAILABLE'))
    // rm of a tag deletes the record and its blocks; rm of a CID only this node's copy.
    const removed = await n.artifacts.remove('a:1')
    assert.equal(removed.removedTags, 1)
    assert.equal(n.store.get('tag/a:1'), undefined)
    await n.artifacts.remove(b.cid)
    assert.ok(n.store.get('tag/b:1'), 'the tag stays: other nodes still hold b')
    assert.equal(n.artifacts.stats().blocks, 0)
  })
})

describe('quota and the blockstore', () => {
  it('a push past the quota fails with a clear error and leaves the store as it was', async () => {
    const n = await node('2M')
    const src = await tempDir()
    await writeFile(join(src, 'small'), 'x'.repeat(1000))
    await writeFile(
      join(src, 'big'),
      new Uint8Array(3 * CHUNK_BYTES).map((_, i) => (i >> 20) + 1),
    )
    await n.artifacts.push(join(src, 'small'), 'small:1')
    const before = n.artifacts.stats()
    await assert.rejects(
      n.artifacts.push(join(src, 'big'), 'big:1'),
      (e) => code('ERR_ARTIFACT_QUOTA')(e) && /km1s artifacts gc/.test(String(e)),
    )
    assert.equal(n.store.get('tag/big:1'), undefined)
    const shards = await readdir(join(n.dir, 'artifacts', 'blocks'))
    for (const s of shards)
      for (const f of await readdir(join(n.dir, 'artifacts', 'blocks', s)))
        assert.ok(!f.startsWith('.tmp-'), f)
    // The chunks that fit are garbage now; gc takes them back to where the store was.
    await n.artifacts.gc()
    assert.deepEqual(n.artifacts.stats().bytes, before.bytes)
    assert.ok((await n.artifacts.ensure('small:1', 'amd64')).dir)
  })

  it('finds a damaged block on read and removes it; reopening finds the blocks that are left', async () => {
    const dir = await tempDir()
    const bs = new FileBlockstore(dir)
    await bs.open(Number.POSITIVE_INFINITY)
    const good = new TextEncoder().encode('good block')
    const cid = rawCid(good)
    await bs.put(cid, good)
    const other = rawCid(new Uint8Array([1, 2, 3]))
    await bs.put(other, new Uint8Array([1, 2, 3]))
    await writeFile(join(dir, cid.toString().slice(-2), cid.toString()), 'bad block!')
    await writeFile(join(dir, cid.toString().slice(-2), '.tmp-1-1'), 'left by a crash')
    // A block this process wrote a moment ago is trusted; after a restart (a crash, torn writes) every block
    // is checked on read again.
    const restarted = new FileBlockstore(dir)
    await restarted.open(Number.POSITIVE_INFINITY)
    assert.equal(await restarted.get(cid), undefined)
    assert.equal(restarted.has(cid), false)
    assert.deepEqual([...((await restarted.get(other)) ?? [])], [1, 2, 3])
    const again = new FileBlockstore(dir)
    await again.open(Number.POSITIVE_INFINITY)
    assert.deepEqual([...again.keys()], [other.toString()])
    assert.deepEqual(again.stats().bytes, 3)
  })

  it('reads quota settings as sizes or a share of the disk', async () => {
    const dir = await tempDir()
    assert.equal(await resolveQuota('500M', dir), 500 * 2 ** 20)
    assert.equal(await resolveQuota('2G', dir), 2 * 2 ** 30)
    assert.equal(await resolveQuota('1234', dir), 1234)
    assert.ok((await resolveQuota(undefined, dir)) > 0)
    await assert.rejects(resolveQuota('lots', dir), code('ERR_ARTIFACT_QUOTA_SETTING'))
  })
})
