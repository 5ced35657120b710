// The artifact store on one node, with a real replicated Store and no peers: push (files, trees, arches,
// refusals), ensure's read-only checkout, gc of what no tag or workload refers to, the quota, and the
// blockstore's own checks (a damaged block is found and removed, a failed write leaves nothing behind).
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
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
import {
  delRecord,
  FileBlockstore,
  putRecord,
  readIndex,
  resolveQuota,
} from '../../../src/artifacts/blockstore.ts'
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
    // The chunks that fit are garbage now; gc takes them back to where the store was, on disk too.
    await n.artifacts.gc()
    assert.deepEqual(n.artifacts.stats().bytes, before.bytes)
    assert.equal(await packBytes(join(n.dir, 'artifacts', 'blocks')), before.bytes)
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
    await bs.close()
    // The first block's bytes damaged in its pack (offset 0 of the first pack).
    const pack = join(dir, 'packs', '1.pack')
    const bytes = await readFile(pack)
    bytes.write('bad', 0)
    await writeFile(pack, bytes)
    // A block this process wrote a moment ago is trusted; after a restart (a crash, torn writes) every block
    // is checked on read again.
    const restarted = new FileBlockstore(dir)
    await restarted.open(Number.POSITIVE_INFINITY)
    assert.equal(await restarted.get(cid), undefined)
    assert.equal(restarted.has(cid), false)
    assert.deepEqual([...((await restarted.get(other)) ?? [])], [1, 2, 3])
    await restarted.close()
    const again = new FileBlockstore(dir)
    await again.open(Number.POSITIVE_INFINITY)
    assert.deepEqual([...again.keys()], [other.toString()])
    assert.deepEqual(again.stats().bytes, 3)
    await again.close()
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

describe('blockstore packs', () => {
  const block = (n: number, size = 1000) => {
    const bytes = new Uint8Array(size).map((_, i) => (i * 7 + n) & 0xff)
    return { cid: rawCid(bytes), bytes }
  }

  it('writes index records that read back, and stops at a torn or garbage tail', () => {
    const a = block(1).cid.toString()
    const b = block(2).cid.toString()
    const idx = Buffer.concat([putRecord(a, 0, 1000), putRecord(b, 1000, 5), delRecord(a)])
    assert.deepEqual(readIndex(idx), {
      records: [
        { op: 1, key: a, offset: 0, size: 1000 },
        { op: 1, key: b, offset: 1000, size: 5 },
        { op: 2, key: a },
      ],
      whole: idx.length,
    })
    for (let cut = 0; cut < idx.length; cut++) {
      const { records, whole } = readIndex(idx.subarray(0, cut))
      assert.ok(whole <= cut && records.length <= 3)
    }
    const garbage = Buffer.concat([putRecord(a, 0, 1000), Buffer.from([1, 3, 0x41, 0x42, 0x43])])
    assert.equal(readIndex(garbage).records.length, 1)
    assert.equal(readIndex(garbage).whole, putRecord(a, 0, 1000).length)
  })

  it('puts many blocks into one pack, survives a torn index tail, and gives deleted space back in gc', async () => {
    const dir = await tempDir()
    const bs = new FileBlockstore(dir)
    await bs.open(Number.POSITIVE_INFINITY)
    const blocks = Array.from({ length: 6 }, (_, i) => block(i))
    await Promise.all(blocks.map((b) => bs.put(b.cid, b.bytes)))
    assert.deepEqual(await readdir(join(dir, 'packs')), ['1.idx', '1.pack'])
    await bs.close()
    // A crash while appending an index record leaves half of one.
    await writeFile(join(dir, 'packs', '1.idx'), Buffer.from([1, 59, 0x62]), { flag: 'a' })
    const reopened = new FileBlockstore(dir)
    await reopened.open(Number.POSITIVE_INFINITY)
    assert.equal(reopened.stats().blocks, 6)
    for (const b of blocks) sameBytes(await reopened.get(b.cid), b.bytes)
    for (const b of blocks.slice(0, 4)) assert.equal(await reopened.delete(b.cid.toString()), 1000)
    assert.equal(await packBytes(dir), 6000)
    // The live blocks move to a new pack and the old one goes.
    assert.equal(await reopened.compact(), 4000)
    assert.equal(await packBytes(dir), 2000)
    assert.deepEqual(await readdir(join(dir, 'packs')), ['2.idx', '2.pack'])
    await reopened.close()
    const third = new FileBlockstore(dir)
    await third.open(Number.POSITIVE_INFINITY)
    assert.deepEqual(
      [...third.keys()].sort(),
      blocks
        .slice(4)
        .map((b) => b.cid.toString())
        .sort(),
    )
    for (const b of blocks.slice(4)) sameBytes(await third.get(b.cid), b.bytes)
    await third.close()
  })

  it('reads and deletes blocks of the old one-file-per-block layout', async () => {
    const dir = await tempDir()
    const b = block(9)
    const key = b.cid.toString()
    await mkdir(join(dir, key.slice(-2)))
    await writeFile(join(dir, key.slice(-2), key), b.bytes)
    await writeFile(join(dir, key.slice(-2), '.tmp-1-1'), 'left by a crash')
    const bs = new FileBlockstore(dir)
    await bs.open(Number.POSITIVE_INFINITY)
    sameBytes(await bs.get(b.cid), b.bytes)
    assert.deepEqual(await readdir(join(dir, key.slice(-2))), [key])
    assert.equal(await bs.delete(key), 1000)
    assert.deepEqual(await readdir(join(dir, key.slice(-2))), [])
    await bs.close()
  })

  it('a full disk fails the put with ERR_DISK_FULL and keeps every block written before', {
    skip: process.getuid?.() !== 0 && 'mounting a small tmpfs needs root',
  }, async () => {
    const dir = await tempDir()
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'km1s-test', dir])
    cleanups.push(async () => execFileSync('umount', ['-l', dir]))
    const bs = new FileBlockstore(dir)
    await bs.open(Number.POSITIVE_INFINITY)
    const blocks = Array.from({ length: 6 }, (_, i) => block(i, CHUNK_BYTES))
    let stored = 0
    let failure: unknown
    for (const b of blocks) {
      try {
        await bs.put(b.cid, b.bytes)
        stored++
      } catch (err) {
        failure = err
        break
      }
    }
    assert.ok(code('ERR_DISK_FULL')(failure), String(failure))
    assert.match((failure as Error).message, /is full/)
    assert.ok(stored >= 2 && stored < 6, `stored ${stored}`)
    assert.equal(bs.stats().blocks, stored)
    for (const b of blocks.slice(0, stored)) sameBytes(await bs.get(b.cid), b.bytes)
    await bs.close()
    const reopened = new FileBlockstore(dir)
    await reopened.open(Number.POSITIVE_INFINITY)
    assert.equal(reopened.stats().blocks, stored)
    for (const b of blocks.slice(0, stored)) sameBytes(await reopened.get(b.cid), b.bytes)
    await reopened.close()
  })
})

/** Bytes of every pack file under a blockstore directory. */
async function packBytes(dir: string): Promise<number> {
  let total = 0
  for (const name of await readdir(join(dir, 'packs')))
    if (name.endsWith('.pack')) total += (await stat(join(dir, 'packs', name))).size
  return total
}

function sameBytes(got: Uint8Array | undefined, want: Uint8Array): void {
  assert.ok(got && Buffer.from(got).equals(want), 'the block read back differs')
}
