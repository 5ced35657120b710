// Block exchange benchmark: km1s's /km1s/blocks/1.0.0 against @helia/bitswap 4 over the same libp2p stack
// (km1s's own mesh: tcp, pnet, noise, yamux) on loopback, 64 MiB of 1 MiB blocks from one seeder to F
// fetchers at once, files on disk for both. Each variant runs in its own process (time, peak RSS and heap of
// that process, which holds every node of the run: a measure of protocol cost, not of a fleet).
// Usage: scripts/bench/artifacts-exchange [--quick]   (no root needed)
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { defaultLogger } from '@libp2p/logger'
import { multiaddr } from '@multiformats/multiaddr'
import { Level } from 'level'
import { sha256 } from 'multiformats/hashes/sha2'
import { pino } from 'pino'
// A deep import: @helia/bitswap exports only its Helia mixin, and this needs the engine without a Helia node.
import { Bitswap } from '../../node_modules/@helia/bitswap/dist/src/bitswap.js'
import { Artifacts } from '../../src/artifacts/artifacts.ts'
import { FileBlockstore } from '../../src/artifacts/blockstore.ts'
import { type CID, rawCid } from '../../src/artifacts/cid.ts'
import { createMesh, type Mesh } from '../../src/mesh/index.ts'
import type { PeerBookEntry } from '../../src/mesh/peer-book.ts'
import { Store, type WireRecord } from '../../src/state/index.ts'
import { printRows, type Row, writeJson } from './report.ts'

const SIZE = 64 * 2 ** 20
const CHUNK = 2 ** 20
const silent = pino({ level: 'silent' })

interface Result {
  ms: number
  peakRssMiB: number
  peakHeapMiB: number
}

async function makeNode(dir: string, secret: Uint8Array, port: number) {
  const db = new Level<string, unknown>(join(dir, 'db'), { valueEncoding: 'json' })
  await db.open()
  const privateKey = await generateKeyPair('Ed25519')
  const mesh = await createMesh({
    privateKey,
    clusterSecret: secret,
    // A fixed port: the mesh announces no loopback address, so peers dial this one.
    listen: [`/ip4/127.0.0.1/tcp/${port}`],
    peers: [],
    peerBookStore: db.sublevel<string, PeerBookEntry>('peers', { valueEncoding: 'json' }),
    logger: silent,
    mdns: false,
  })
  await mesh.start()
  const store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey,
    logger: silent,
  })
  await store.load()
  return { db, mesh, store, dir, addr: `/ip4/127.0.0.1/tcp/${port}/p2p/${mesh.peerId}` }
}

async function connectAll(nodes: Array<{ mesh: Mesh; addr: string }>): Promise<void> {
  for (const [i, a] of nodes.entries())
    for (const b of nodes.slice(i + 1)) await a.mesh.libp2p.dial(multiaddr(b.addr))
}

/** interface-blockstore over km1s's file blockstore, so both protocols read and write the same kind of disk. */
function bitswapStore(fs: FileBlockstore) {
  return {
    has: (cid: CID) => fs.has(cid),
    put: async (cid: CID, bytes: Uint8Array) => {
      await fs.put(cid, bytes)
      return cid
    },
    get: async function* (cid: CID) {
      const bytes = await fs.get(cid)
      if (!bytes) throw Object.assign(new Error('not found'), { name: 'NotFoundError' })
      yield bytes
    },
  }
}

function sampler(): { stop: () => { peakRssMiB: number; peakHeapMiB: number } } {
  let rss = 0
  let heap = 0
  const t = setInterval(() => {
    const m = process.memoryUsage()
    rss = Math.max(rss, m.rss)
    heap = Math.max(heap, m.heapUsed)
  }, 50)
  return {
    stop: () => {
      clearInterval(t)
      return { peakRssMiB: rss / 2 ** 20, peakHeapMiB: heap / 2 ** 20 }
    },
  }
}

async function variant(kind: string, fetchers: number): Promise<Result> {
  const root = mkdtempSync(join(tmpdir(), 'km1s-bench-exchange-'))
  const secret = new Uint8Array(32).fill(7)
  const basePort = 42_000 + Math.floor(Math.random() * 2000) * 8
  try {
    const nodes = await Promise.all(
      Array.from({ length: fetchers + 1 }, (_, i) => makeNode(join(root, `n${i}`), secret, basePort + i)),
    )
    await connectAll(nodes)
    const data = randomBytes(SIZE)
    const file = join(root, 'artifact.bin')
    writeFileSync(file, data)
    const [seed, ...rest] = nodes as [(typeof nodes)[0], ...typeof nodes]
    if (kind === 'km1s') {
      const arts = nodes.map(
        (n) =>
          new Artifacts({
            dataDir: n.dir,
            store: n.store,
            libp2p: n.mesh.libp2p,
            logger: silent,
            arch: 'amd64',
          }),
      )
      for (const a of arts) await a.start()
      const pushed = await (arts[0] as Artifacts).push(file, 'bench:1')
      const s = sampler()
      const t0 = performance.now()
      await Promise.all(arts.slice(1).map((a) => a.pull(pushed.cid)))
      const ms = performance.now() - t0
      if (process.env.KM1S_BENCH_DEBUG)
        process.stderr.write(`${JSON.stringify(arts.map((a) => a.stats()))}\n`)
      for (const a of arts) await a.stop()
      return { ms, ...s.stop() }
    }
    const stores = nodes.map((n) => new FileBlockstore(join(n.dir, 'bitswap')))
    for (const s of stores) await s.open(Number.POSITIVE_INFINITY)
    const cids: CID[] = []
    for (let off = 0; off < SIZE; off += CHUNK) {
      const chunk = data.subarray(off, off + CHUNK)
      const cid = rawCid(chunk)
      cids.push(cid)
      await (stores[0] as FileBlockstore).put(cid, chunk)
    }
    const seedPeer = { id: seed.mesh.peerId, multiaddrs: [multiaddr(seed.addr)] }
    const swaps = nodes.map(
      (n, i) =>
        new Bitswap({
          libp2p: n.mesh.libp2p,
          blockstore: bitswapStore(stores[i] as FileBlockstore),
          logger: defaultLogger(),
          getHasher: () => sha256,
          routing: {
            findProviders: async function* () {
              yield seedPeer
            },
          },
        } as never),
    )
    for (const b of swaps) await b.start()
    const s = sampler()
    const t0 = performance.now()
    await Promise.all(
      swaps.slice(1).map(async (b, k) => {
        const store = stores[k + 1] as FileBlockstore
        // A window of 16 wants in flight, as a Helia session would keep.
        let next = 0
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            while (next < cids.length) {
              const cid = cids[next++] as CID
              await store.put(cid, await b.want(cid))
            }
          }),
        )
      }),
    )
    const ms = performance.now() - t0
    for (const b of swaps) await b.stop()
    void rest
    return { ms, ...s.stop() }
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
}

const [, , mode, kind, f] = process.argv
if (mode === '--child') {
  const r = await variant(kind ?? 'km1s', Number(f))
  process.stdout.write(`${JSON.stringify(r)}\n`)
  process.exit(0)
} else {
  const quick = process.argv.includes('--quick')
  const runs = quick ? 1 : 3
  const rows: Row[] = []
  const all: Record<string, Result[]> = {}
  for (const fetchers of [1, 4]) {
    for (const kind of ['bitswap', 'km1s']) {
      const results: Result[] = []
      for (let i = 0; i < runs; i++) {
        const child = spawnSync(
          process.execPath,
          ['--max-old-space-size=64', import.meta.filename, '--child', kind, String(fetchers)],
          { encoding: 'utf8', timeout: 600_000 },
        )
        if (child.status !== 0) throw new Error(`${kind} with ${fetchers} fetchers failed: ${child.stderr}`)
        results.push(JSON.parse(child.stdout.trim().split('\n').at(-1) ?? '{}') as Result)
        process.stdout.write(`${kind}, ${fetchers} fetcher(s): ${JSON.stringify(results.at(-1))}\n`)
      }
      all[`${kind}-${fetchers}`] = results
    }
    const med = (k: string, f: (r: Result) => number) => {
      const xs = (all[k] ?? []).map(f).sort((a, b) => a - b)
      return xs[Math.floor(xs.length / 2)] ?? Number.NaN
    }
    const b = `bitswap-${fetchers}`
    const k = `km1s-${fetchers}`
    rows.push(
      {
        metric: `64 MiB to ${fetchers} fetcher(s): time`,
        value: med(k, (r) => r.ms) / 1000,
        unit: 's',
        baseline: med(b, (r) => r.ms) / 1000,
      },
      {
        metric: `64 MiB to ${fetchers} fetcher(s): peak RSS`,
        value: med(k, (r) => r.peakRssMiB),
        unit: 'MiB',
        baseline: med(b, (r) => r.peakRssMiB),
      },
      {
        metric: `64 MiB to ${fetchers} fetcher(s): peak heap`,
        value: med(k, (r) => r.peakHeapMiB),
        unit: 'MiB',
        baseline: med(b, (r) => r.peakHeapMiB),
      },
    )
  }
  printRows(
    'block exchange: km1s /km1s/blocks/1.0.0 (VALUE) vs @helia/bitswap 4.0.19 (BASELINE), one process, loopback',
    rows,
  )
  process.stdout.write(`wrote ${writeJson('artifacts-exchange', { rows, all })}\n`)
}
