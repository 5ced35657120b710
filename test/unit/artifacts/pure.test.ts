// The pure parts of artifacts/: chunking, the manifest round trip and its checks, arch detection from ELF
// headers, refs and tag records, the block protocol's frames.
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import fc from 'fast-check'
import { blockMatches, CHUNK_BYTES, parseCid, rawCid } from '../../../src/artifacts/cid.ts'
import { ELF_HEADER_BYTES, elfArch } from '../../../src/artifacts/elf.ts'
import {
  decodeManifest,
  encodeManifest,
  type Manifest,
  manifestSize,
  uniqueChunks,
} from '../../../src/artifacts/manifest.ts'
import {
  bitAt,
  bitfield,
  decodeRequest,
  encodeRequest,
  OP_BULK,
  OP_HAVE,
  OP_WANT,
} from '../../../src/artifacts/protocol.ts'
import {
  cidForArch,
  parseRef,
  rootsOf,
  TagValue,
  withArch,
  withoutArch,
} from '../../../src/artifacts/refs.ts'
import { readChunks } from '../../../src/artifacts/tree.ts'
import { isKm1sError } from '../../../src/common/errors.ts'

const dirs: string[] = []
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'km1s-art-unit-'))
  dirs.push(d)
  return d
}

function elfHeader(bits: 1 | 2, little: boolean, machine: number): Uint8Array {
  const h = new Uint8Array(64)
  h.set([0x7f, 0x45, 0x4c, 0x46, bits, little ? 1 : 2, 1], 0)
  new DataView(h.buffer).setUint16(18, machine, little)
  return h
}

describe('chunker', () => {
  it('splits a file into 1 MiB chunks, the last one shorter, and the bytes come back in order', async () => {
    const dir = await tempDir()
    const data = new Uint8Array(2 * CHUNK_BYTES + 12_345).map((_, i) => (i * 7) & 0xff)
    await writeFile(join(dir, 'f'), data)
    const chunks: Uint8Array[] = []
    for await (const c of readChunks(join(dir, 'f'))) chunks.push(Uint8Array.from(c))
    assert.deepEqual(
      chunks.map((c) => c.length),
      [CHUNK_BYTES, CHUNK_BYTES, 12_345],
    )
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(data))
  })

  it('gives an empty file no chunk and an exact multiple no empty tail', async () => {
    const dir = await tempDir()
    await writeFile(join(dir, 'empty'), '')
    await writeFile(join(dir, 'two'), new Uint8Array(2 * CHUNK_BYTES))
    const count = async (p: string) => {
      let n = 0
      for await (const _ of readChunks(p)) n++
      return n
    }
    assert.equal(await count(join(dir, 'empty')), 0)
    assert.equal(await count(join(dir, 'two')), 2)
  })

  it('names a chunk by a CIDv1 raw sha256 that verifies only its own bytes', () => {
    const bytes = new TextEncoder().encode('hello')
    const cid = rawCid(bytes)
    assert.equal(cid.version, 1)
    assert.equal(cid.code, 0x55)
    assert.equal(cid.toString(), 'bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq')
    assert.ok(blockMatches(cid, bytes))
    assert.ok(!blockMatches(cid, new TextEncoder().encode('hellO')))
    assert.equal(parseCid(cid.toString())?.toString(), cid.toString())
    assert.equal(parseCid('not-a-cid'), undefined)
    // CIDv0 (dag-pb) is not a kind km1s makes.
    assert.equal(parseCid('QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG'), undefined)
  })
})

describe('manifest', () => {
  const a = rawCid(new Uint8Array([1]))
  const b = rawCid(new Uint8Array([2]))
  const manifest: Manifest = {
    v: 1,
    kind: 'dir',
    arch: 'arm64',
    entries: [
      { path: 'bin', kind: 'dir', mode: 0o755 },
      { path: 'bin/app', kind: 'file', mode: 0o755, size: CHUNK_BYTES + 1, chunks: [a, b] },
      { path: 'bin/app2', kind: 'file', mode: 0o644, size: 1, chunks: [a] },
      { path: 'link', kind: 'symlink', target: 'bin/app' },
    ],
  }

  it('round-trips through dag-cbor to the same value and the same CID', () => {
    const { cid, bytes } = encodeManifest(manifest)
    assert.equal(cid.code, 0x71)
    assert.ok(blockMatches(cid, bytes))
    const back = decodeManifest(bytes)
    assert.ok(back)
    assert.deepEqual(JSON.parse(JSON.stringify(back)), JSON.parse(JSON.stringify(manifest)))
    assert.equal(encodeManifest(back).cid.toString(), cid.toString())
    assert.equal(manifestSize(back), CHUNK_BYTES + 2)
    assert.deepEqual(uniqueChunks(back).map(String), [a, b].map(String))
  })

  it('refuses manifests that would escape the checkout or lie about sizes', () => {
    const bad = (change: (m: Manifest) => unknown) => {
      const m: Manifest = { ...manifest, entries: manifest.entries.map((e) => ({ ...e })) }
      change(m)
      return decodeManifest(dagCbor.encode(m))
    }
    assert.equal(
      bad((m) => m.entries.push({ path: '../etc/passwd', kind: 'dir', mode: 0o755 })),
      undefined,
    )
    assert.equal(
      bad((m) => m.entries.push({ path: '/etc', kind: 'dir', mode: 0o755 })),
      undefined,
    )
    assert.equal(
      bad((m) => m.entries.push({ path: 'a//b', kind: 'dir', mode: 0o755 })),
      undefined,
    )
    assert.equal(
      bad((m) => m.entries.push({ path: 'link/passwd', kind: 'file', mode: 0o644, size: 1, chunks: [a] })),
      undefined,
      'a file under a symlink',
    )
    assert.equal(
      bad((m) =>
        m.entries.push({ path: 'x', kind: 'file', mode: 0o644, size: 5 * CHUNK_BYTES, chunks: [a] }),
      ),
      undefined,
      'a size the chunks cannot hold',
    )
    assert.equal(
      bad((m) => m.entries.push({ path: 'bin', kind: 'dir', mode: 0o755 })),
      undefined,
      'a duplicate',
    )
    assert.equal(decodeManifest(new Uint8Array([1, 2, 3])), undefined)
    assert.equal(decodeManifest(dagCbor.encode({ v: 2 })), undefined)
  })
})

describe('arch detection', () => {
  it('reads the machine of 32- and 64-bit, little- and big-endian ELF headers', () => {
    assert.equal(elfArch(elfHeader(2, true, 62)), 'amd64')
    assert.equal(elfArch(elfHeader(2, true, 183)), 'arm64')
    assert.equal(elfArch(elfHeader(1, true, 40)), 'armv7')
    assert.equal(elfArch(elfHeader(1, true, 3)), '386')
    assert.equal(elfArch(elfHeader(2, true, 243)), 'riscv64')
    assert.equal(elfArch(elfHeader(2, false, 183)), 'arm64')
    assert.equal(elfArch(elfHeader(2, true, 40)), undefined, 'a 64-bit ARM32 header is nonsense')
    assert.equal(elfArch(elfHeader(2, true, 9999)), undefined)
  })

  it('says nothing for scripts, short files and garbage', () => {
    assert.equal(elfArch(new TextEncoder().encode('#!/bin/sh\necho hello world\n')), undefined)
    assert.equal(elfArch(new Uint8Array([0x7f, 0x45, 0x4c, 0x46])), undefined)
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 64 }), (bytes) => {
        const r = elfArch(bytes)
        return r === undefined || typeof r === 'string'
      }),
    )
  })

  it("reads this machine's own Node binary", async () => {
    const { readFile } = await import('node:fs/promises')
    const header = (await readFile(process.execPath)).subarray(0, ELF_HEADER_BYTES)
    const expected = { x64: 'amd64', arm64: 'arm64', arm: 'armv7' }[process.arch as string]
    assert.equal(elfArch(header), expected)
  })
})

describe('refs and tag records', () => {
  it('parses NAME:TAG, NAME (latest) and CIDs, and refuses the rest with ERR_ARTIFACT_REF', () => {
    assert.deepEqual(parseRef('hello:1'), { kind: 'tag', name: 'hello', tag: '1', key: 'tag/hello:1' })
    assert.deepEqual(parseRef('hello'), {
      kind: 'tag',
      name: 'hello',
      tag: 'latest',
      key: 'tag/hello:latest',
    })
    const cid = rawCid(new Uint8Array([1])).toString()
    assert.equal(parseRef(cid).kind, 'cid')
    for (const bad of ['Hello:1', 'a:b:c', ':1', 'x:', 'a/b:1'])
      assert.throws(
        () => parseRef(bad),
        (e) => isKm1sError(e) && e.code === 'ERR_ARTIFACT_REF',
        bad,
      )
  })

  it('keeps arches side by side and picks the exact arch, else any', () => {
    const c1 = encodeManifest({ v: 1, kind: 'dir', arch: 'arm64', entries: [] }).cid.toString()
    const c2 = encodeManifest({ v: 1, kind: 'dir', arch: 'amd64', entries: [] }).cid.toString()
    let v = withArch(undefined, 'arm64', { cid: c1, size: 1, pushedAt: 1 })
    v = withArch(v, 'amd64', { cid: c2, size: 2, pushedAt: 2 })
    assert.ok(TagValue.safeParse(v).success)
    assert.deepEqual(Object.keys(v.arches).sort(), ['amd64', 'arm64'])
    assert.equal(cidForArch(v, 'arm64'), c1)
    assert.equal(cidForArch(v, 'armv7'), undefined)
    assert.equal(cidForArch(withArch(v, 'any', { cid: c2, size: 2, pushedAt: 3 }), 'armv7'), c2)
    assert.deepEqual(rootsOf('x:1', () => v).sort(), [c1, c2].sort())
    assert.deepEqual(
      rootsOf('NOT A REF', () => v),
      [],
    )
    const one = withoutArch(v, 'arm64')
    assert.deepEqual(Object.keys(one?.arches ?? {}), ['amd64'])
    assert.equal(withoutArch(one as typeof v, 'amd64'), undefined)
  })

  it('refuses tag values that are not one CID per arch', () => {
    assert.ok(!TagValue.safeParse({ arches: { arm64: { cid: 'x', size: 1, pushedAt: 1 } } }).success)
    assert.ok(!TagValue.safeParse({ arches: {}, extra: 1 }).success)
    assert.ok(
      !TagValue.safeParse({ arches: { 'ARM 64': { cid: 'b'.repeat(30), size: 1, pushedAt: 1 } } }).success,
    )
  })
})

describe('block protocol frames', () => {
  it('round-trips requests and refuses garbage', () => {
    const cid = rawCid(new Uint8Array([9]))
    for (const op of [OP_WANT, OP_HAVE]) {
      const r = decodeRequest(encodeRequest(op, cid))
      assert.equal(r?.op, op)
      assert.equal(r && 'cid' in r ? r.cid.toString() : undefined, cid.toString())
    }
    assert.deepEqual(decodeRequest(Uint8Array.of(OP_BULK)), { op: OP_BULK })
    assert.equal(decodeRequest(new Uint8Array([3, ...cid.bytes])), undefined)
    assert.equal(decodeRequest(new Uint8Array([4, ...cid.bytes])), undefined)
    assert.equal(decodeRequest(new Uint8Array([1])), undefined)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (b) => {
        const r = decodeRequest(b)
        return r === undefined || r.op === OP_WANT || r.op === OP_HAVE || r.op === OP_BULK
      }),
    )
  })

  it('a bitfield holds exactly the bits it was given', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { maxLength: 300 }), (bits) => {
        const field = bitfield(bits)
        return bits.every((b, i) => bitAt(field, i) === b) && !bitAt(field, bits.length + 8)
      }),
    )
  })
})
