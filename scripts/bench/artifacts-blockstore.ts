// Blockstore benchmark: 1 MiB blocks written and read back through km1s's pack-file blockstore and through
// LevelDB (level 10, the settings the agent uses for its database), on this machine's disk. The faster one
// is the blockstore (docs/artifacts.md). Usage: scripts/bench/artifacts-blockstore [--quick]   (no root)
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Level } from 'level'
import { FileBlockstore } from '../../src/artifacts/blockstore.ts'
import { blockMatches, type CID, rawCid } from '../../src/artifacts/cid.ts'
import { printRows, type Row, writeJson } from './report.ts'

const quick = process.argv.includes('--quick')
const BLOCKS = quick ? 128 : 512
const RUNS = quick ? 1 : 3
const MiB = 2 ** 20

const blocks = Array.from({ length: BLOCKS }, () => {
  const bytes = randomBytes(MiB)
  return { cid: rawCid(bytes), bytes }
})

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

async function files(dir: string) {
  const bs = new FileBlockstore(dir)
  await bs.open(Number.POSITIVE_INFINITY)
  const write = await timed(async () => {
    for (const b of blocks) await bs.put(b.cid, b.bytes)
  })
  await bs.close()
  // Read by a store opened afresh (as after a restart): every block is checked against its CID, as LevelDB's are.
  const again = new FileBlockstore(dir)
  await again.open(Number.POSITIVE_INFINITY)
  const read = await timed(async () => {
    for (const b of blocks) if (!(await again.get(b.cid))) throw new Error('missing')
  })
  const del = await timed(async () => {
    for (const b of blocks) await again.delete(b.cid.toString())
    // The packs give the space back when gc compacts them.
    await again.compact()
  })
  await again.close()
  return { write, read, del }
}

async function level(dir: string) {
  const db = new Level<string, Uint8Array>(dir, {
    keyEncoding: 'utf8',
    valueEncoding: 'view',
    cacheSize: 1 << 20,
    writeBufferSize: 1 << 20,
  })
  await db.open()
  const key = (c: CID) => c.toString()
  const write = await timed(async () => {
    for (const b of blocks) await db.put(key(b.cid), b.bytes)
  })
  const read = await timed(async () => {
    for (const b of blocks) {
      const bytes = await db.get(key(b.cid))
      // The same check a LevelDB blockstore would make before handing a block on.
      if (!bytes || !blockMatches(b.cid, bytes)) throw new Error('missing')
    }
  })
  const del = await timed(async () => {
    for (const b of blocks) await db.del(key(b.cid))
    // classic-level compacts on request; the space comes back only then.
    await (db as unknown as { compactRange(a: string, b: string): Promise<void> }).compactRange(
      '\u0000',
      '\uffff',
    )
  })
  await db.close()
  return { write, read, del }
}

const results: Record<string, Array<{ write: number; read: number; del: number }>> = { files: [], level: [] }
for (let r = 0; r < RUNS; r++) {
  for (const kind of ['files', 'level'] as const) {
    const dir = mkdtempSync(join(tmpdir(), `km1s-bench-bs-${kind}-`))
    try {
      results[kind]?.push(kind === 'files' ? await files(dir) : await level(dir))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN
const mbps = (kind: string, f: (x: { write: number; read: number; del: number }) => number) =>
  (BLOCKS * MiB) / 1e6 / (median((results[kind] ?? []).map(f)) / 1000)
const rows: Row[] = [
  {
    metric: 'write 1 MiB blocks',
    value: mbps('files', (x) => x.write),
    unit: 'MB/s',
    baseline: mbps('level', (x) => x.write),
  },
  {
    metric: 'read 1 MiB blocks, hash checked',
    value: mbps('files', (x) => x.read),
    unit: 'MB/s',
    baseline: mbps('level', (x) => x.read),
  },
  {
    metric: 'delete them, space given back (compaction)',
    value: mbps('files', (x) => x.del),
    unit: 'MB/s',
    baseline: mbps('level', (x) => x.del),
  },
]
printRows(
  `blockstore: ${BLOCKS} blocks of 1 MiB, km1s's pack files (VALUE) vs LevelDB (BASELINE), median of ${RUNS}`,
  rows,
)
process.stdout.write(`wrote ${writeJson('artifacts-blockstore', { rows, results })}\n`)
