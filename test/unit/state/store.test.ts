import './free-values.ts'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import fc from 'fast-check'
import { Level } from 'level'
import { pino } from 'pino'
import { isKm1sError } from '../../../src/common/errors.ts'
import { computeDigest, digestFingerprint } from '../../../src/state/digest.ts'
import { compareHlc, type Hlc, MAX_DRIFT_MS } from '../../../src/state/hlc.ts'
import { mergeMaps, supersedes } from '../../../src/state/merge.ts'
import {
  type JsonValue,
  MAX_RECORD_BYTES,
  type NodeValue,
  type SignedRecord,
  toWire,
  type WireRecord,
} from '../../../src/state/record.ts'
import { signRecord } from '../../../src/state/sign.ts'
import {
  type ApplyResult,
  type MetaDb,
  type RecordsDb,
  SCHEMA_VERSION,
  Store,
  type StoreChange,
  type StoreInit,
} from '../../../src/state/store.ts'
import { untilWithin } from '../until.ts'

const until = untilWithin(2_000, 5)

const NOW = 1_700_000_000_000
const privateKeys = await Promise.all([0, 1, 2].map(() => generateKeyPair('Ed25519')))
const [keyA, keyB, keyC] = privateKeys as [PrivateKey, PrivateKey, PrivateKey]
const A = peerIdFromPrivateKey(keyA).toString()
const B = peerIdFromPrivateKey(keyB).toString()
const silent = pino({ level: 'silent' })

// ---- temp databases, closed and removed after the file --------------------------------------------------

const dirs: string[] = []
const cleanups: Array<() => Promise<unknown>> = []
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => undefined)
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'km1s-store-'))
  dirs.push(d)
  return d
}

interface Db {
  db: Level<string, unknown>
  records: RecordsDb
  meta: MetaDb
}

async function openDb(dir: string): Promise<Db> {
  const db = new Level<string, unknown>(dir, { valueEncoding: 'json' })
  await db.open()
  cleanups.push(() => db.close())
  return {
    db,
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
  }
}

async function freshDb(): Promise<Db & { dir: string }> {
  const dir = await tempDir()
  return { dir, ...(await openDb(dir)) }
}

/** A store whose write-behind timer never fires during a test unless the test asks for a short one. */
function newStore(d: Pick<Db, 'records' | 'meta'>, over: Partial<StoreInit> = {}): Store {
  const store = new Store({
    records: d.records,
    meta: d.meta,
    privateKey: keyA,
    logger: silent,
    now: () => NOW,
    flushDelayMs: 3_600_000,
    gcIntervalMs: 3_600_000,
    ...over,
  })
  cleanups.push(() => store.stop())
  return store
}

const hex = (d: Uint8Array) => Buffer.from(d).toString('hex')
const isCode = (code: string) => (err: unknown) => {
  assert.ok(isKm1sError(err), `expected a Km1sError, got ${String(err)}`)
  assert.equal(err.code, code)
  assert.match(err.message, /\.$/, 'the message is a sentence')
  return true
}
/** A valid status/ value (the scheduler's schema), `restarts` varying. */
const statusValue = (restarts: number): JsonValue => ({
  workload: 'web',
  node: 'n1',
  state: 'running',
  ip: null,
  restarts,
  reason: null,
  startedAt: null,
  index: 0,
  spec: 'abc',
  healthy: true,
})

const remote = (key: PrivateKey, k: string, value: JsonValue, hlc: Hlc, deleted = false) =>
  signRecord(key, { key: k, value: deleted ? null : value, hlc, deleted })
const nodeValue = (name: string): NodeValue => ({
  name,
  arch: 'arm64',
  cpus: 4,
  memory: 1 << 30,
  version: '0.1.0',
  addresses: ['/ip4/10.0.0.2/tcp/4001'],
  startedAt: NOW - 60_000,
  wgPublicKey: null,
})

// ---- local API -----------------------------------------------------------------------------------------

describe('Store: local reads and writes', () => {
  it('puts, gets, lists by prefix in key order, and hides tombstones from get and list but not from all()', async () => {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    const wb = await store.put('tag/b:v', { image: 'b' })
    const wa = await store.put('tag/a:v', { image: 'a' })
    await store.put(`label/${A}`, { port: '80' })
    await store.put('tag/gone:v', { image: 'x' })
    assert.equal(wa.author, A)
    assert.deepEqual(store.get('tag/a:v'), wa)
    assert.deepEqual(store.get('tag/a:v')?.value, { image: 'a' })
    assert.equal(store.get('tag/zzz:v'), undefined)

    const tomb = await store.delete('tag/gone:v')
    assert.equal(tomb.deleted, true)
    assert.equal(tomb.value, null)
    assert.ok(compareHlc(tomb.hlc, wb.hlc) > 0, 'the delete carries a later clock than earlier writes')
    assert.equal(store.get('tag/gone:v'), undefined)
    assert.deepEqual(
      store.list('tag/').map((r) => r.key),
      ['tag/a:v', 'tag/b:v'],
    )
    assert.deepEqual(
      store.list('').map((r) => r.key),
      [`label/${A}`, 'tag/a:v', 'tag/b:v'],
    )
    assert.deepEqual(
      store.list('lab').map((r) => r.key),
      [`label/${A}`],
    )
    assert.deepEqual(store.list('workload/'), [])
    assert.equal(store.all().size, 4)
    assert.deepEqual(store.all().get('tag/gone:v'), tomb)
    const stats = store.stats()
    assert.equal(stats.records, 3)
    assert.equal(stats.tombstones, 1)
  })

  it('refuses a local write whose value fails the schema with ERR_INVALID and changes nothing', async () => {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    const good = await store.put(`label/${B}`, { zone: 'kitchen' })
    const before = hex(store.digest())
    const pending = store.stats().pendingWrites
    const events: StoreChange[] = []
    store.onChange((c) => events.push(c))

    await assert.rejects(store.put(`label/${B}`, { zone: 'has space' }), isCode('ERR_INVALID'))
    await assert.rejects(store.put(`label/${B}`, { 'bad key!': 'x' }), isCode('ERR_INVALID'))
    await assert.rejects(store.put('secrets/x', { a: 1 }), isCode('ERR_INVALID'))
    // node/ is owned: this node may not write another node's record
    await assert.rejects(store.put(`node/${B}`, nodeValue('pi-b')), isCode('ERR_INVALID'))
    await assert.rejects(store.put(`node/${A}`, { name: 'pi-a' }), isCode('ERR_INVALID'))

    assert.equal(hex(store.digest()), before)
    assert.deepEqual(store.get(`label/${B}`), good)
    assert.equal(store.get(`node/${A}`), undefined)
    assert.equal(store.all().size, 1)
    assert.equal(store.stats().pendingWrites, pending)
    assert.deepEqual(events, [])
  })

  it('makes a durable put reach the disk before it resolves (close, reopen, load a new Store)', async () => {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    const rec = await store.put(`label/${B}`, { zone: 'kitchen' }, { durable: true })
    const tomb = await store.delete('tag/old:v', { durable: true })
    // The control: a machine write stays in memory until the write-behind delay (an hour here).
    await store.put('tag/later:v', { image: 'x' })
    await d.db.close()

    const again = await openDb(d.dir)
    const loaded = newStore(again)
    await loaded.load()
    assert.deepEqual(loaded.get(`label/${B}`), rec)
    assert.deepEqual(loaded.all().get('tag/old:v'), tomb)
    assert.equal(loaded.all().has('tag/later:v'), false, 'a non-durable write is written behind')
  })

  it('writes machine writes behind, in one batch after flushDelayMs', async () => {
    const d = await freshDb()
    const store = newStore(d, { flushDelayMs: 250 })
    await store.load()
    for (let i = 0; i < 5; i++) await store.put(`tag/w${i}:v`, { i })
    assert.equal(await d.records.get('tag/w0:v'), undefined, 'not written at once')
    assert.equal(store.stats().pendingWrites, 5)
    await until('a flush', () => store.stats().flushes > 0)
    assert.equal(store.stats().flushes, 1, 'five writes, one batch')
    assert.equal(store.stats().pendingWrites, 0)
    for (let i = 0; i < 5; i++) {
      const r = store.get(`tag/w${i}:v`)
      assert.ok(r)
      assert.deepEqual(await d.records.get(`tag/w${i}:v`), toWire(r))
    }
  })

  it('stop() flushes what is pending', async () => {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    const r1 = await store.put('tag/a:v', { i: 1 })
    const r2 = await store.delete('tag/b:v')
    assert.equal(await d.records.get('tag/a:v'), undefined)
    await store.stop()
    assert.deepEqual(await d.records.get('tag/a:v'), toWire(r1))
    assert.deepEqual(await d.records.get('tag/b:v'), toWire(r2))
    assert.equal(store.stats().pendingWrites, 0)
  })
})

// ---- persistence ---------------------------------------------------------------------------------------

describe('Store: loading', () => {
  it('writes the schema version into a new database and refuses one of another version with ERR_SCHEMA', async () => {
    const d = await freshDb()
    await newStore(d).load()
    assert.equal(await d.meta.get('schema'), SCHEMA_VERSION)

    const other = await freshDb()
    await other.meta.put('schema', SCHEMA_VERSION + 1)
    await other.records.put('tag/a:v', { junk: true } as unknown as WireRecord)
    const store = newStore(other)
    await assert.rejects(store.load(), (err) => {
      isCode('ERR_SCHEMA')(err)
      assert.match((err as Error).message, new RegExp(`schema ${SCHEMA_VERSION + 1}`))
      return true
    })
    assert.equal(store.all().size, 0)
    assert.equal(await other.meta.get('schema'), SCHEMA_VERSION + 1, 'the database is left alone')
  })

  it('skips unreadable records and records stored under another key, and loads the rest', async () => {
    const d = await freshDb()
    const writer = newStore(d)
    await writer.load()
    const good = await writer.put('tag/good:v', { ok: true })
    const moved = await writer.put('tag/moved:v', { ok: true })
    await writer.stop()
    await d.records.put('tag/junk:v', { v: 1, key: 'tag/junk:v' } as unknown as WireRecord)
    await d.records.put('tag/elsewhere:v', toWire(moved))

    const store = newStore(d)
    await store.load()
    assert.deepEqual([...store.all().keys()].sort(), ['tag/good:v', 'tag/moved:v'])
    assert.deepEqual(store.get('tag/good:v'), good)
  })

  it('loads 10,000 records written by another Store, identical (digest and every record)', async (t) => {
    const d = await freshDb()
    const writer = newStore(d, { now: Date.now })
    await writer.load()
    const t0 = performance.now()
    for (let i = 0; i < 10_000; i++) {
      switch (i % 5) {
        case 0:
          await writer.delete(`tag/w${i}:v`)
          break
        case 1:
          await writer.put(`tag/s${i}:v`, { port: i % 65_536, selector: { app: `a${i}` } })
          break
        case 2:
          await writer.put(`tag/img${i}:v1`, {
            arches: {
              amd64: {
                cid: `b${'a'.repeat(40)}${i.toString(2).replaceAll('0', 'c').replaceAll('1', 'd')}`,
                size: i,
                pushedAt: i,
              },
            },
          })
          break
        case 3:
          await writer.put(`status/${A}/c${i}`, statusValue(i % 7))
          break
        default:
          await writer.put(`tag/w${i}:v`, { image: `registry.local/w${i}:1`, replicas: i % 3 })
      }
    }
    const writeMs = performance.now() - t0
    await writer.stop()
    assert.equal(writer.all().size, 10_000)
    assert.equal(writer.stats().flushes, 1, 'one batch for 10,000 machine writes')
    await d.db.close()

    const again = await openDb(d.dir)
    const loaded = newStore(again, { now: Date.now })
    const t1 = performance.now()
    await loaded.load()
    const loadMs = performance.now() - t1
    t.diagnostic(`10,000 records: written in ${writeMs.toFixed(0)} ms, loaded in ${loadMs.toFixed(0)} ms`)

    assert.equal(loaded.all().size, 10_000)
    assert.equal(hex(loaded.digest()), hex(writer.digest()))
    assert.deepEqual(loaded.stats().tombstones, 2_000)
    for (const [key, r] of writer.all()) assert.deepEqual(loaded.all().get(key), r)
  })

  it('gives a local write after a restart a clock above every loaded record, even if the wall clock went back', async () => {
    const d = await freshDb()
    const before = newStore(d) // wall clock stands at NOW: clocks NOW.0, NOW.1, NOW.2
    await before.load()
    await before.put('tag/a:v', { v: 1 })
    await before.put('tag/b:v', { v: 1 })
    const oldC = await before.put('tag/c:v', { v: 1 })
    await before.stop()

    // After a reboot the wall clock is a minute behind (a Pi without a real-time clock, before NTP).
    const after = newStore(d, { now: () => NOW - 60_000 })
    await after.load()
    const newC = await after.put('tag/c:v', { v: 2 })
    assert.ok(
      supersedes(newC, oldC),
      `the new write (clock ${newC.hlc.wall}.${newC.hlc.counter}) must win over the old one (${oldC.hlc.wall}.${oldC.hlc.counter})`,
    )
    // What goes wrong: a replica that still holds the old value keeps it, and ours is overwritten.
    const replica = newStore(await freshDb(), { privateKey: keyB })
    assert.equal(await replica.applyRemote(oldC, A), 'applied')
    assert.equal(await replica.applyRemote(newC, A), 'applied')
    assert.deepEqual(replica.get('tag/c:v')?.value, { v: 2 })
  })
})

// ---- write-behind failures -----------------------------------------------------------------------------

/** The records sublevel, but its next `failures` batches wait for `release` and then throw. */
function failingBatches(records: RecordsDb, failures: number, release: Promise<void> = Promise.resolve()) {
  const state = { left: failures, calls: 0 }
  const proxy = new Proxy(records, {
    get(target, prop) {
      if (prop === 'batch' || prop === 'put') {
        return async (...args: unknown[]) => {
          state.calls++
          if (state.left > 0) {
            state.left--
            await release
            throw new Error('ENOSPC: no space left on device')
          }
          return (target[prop] as (...a: unknown[]) => Promise<void>).apply(target, args)
        }
      }
      const v = Reflect.get(target, prop, target)
      return typeof v === 'function' ? v.bind(target) : v
    },
  })
  return { records: proxy, state }
}

describe('Store: a failing disk', () => {
  it('rejects the flush with ERR_DISK, keeps the writes pending, and a later flush writes them', async () => {
    const d = await freshDb()
    const { records, state } = failingBatches(d.records, 1)
    const store = newStore({ records, meta: d.meta })
    await store.load()
    const rs = [await store.put('tag/a:v', { i: 1 }), await store.put('tag/b:v', { i: 2 })]
    const tomb = await store.delete('tag/c:v')
    await assert.rejects(store.flush(), (err) => {
      isCode('ERR_DISK')(err)
      assert.match((err as Error).message, /ENOSPC/)
      return true
    })
    assert.equal(store.stats().pendingWrites, 3)
    assert.equal(store.stats().flushes, 0)
    assert.equal(await d.records.get('tag/a:v'), undefined)
    assert.deepEqual(store.get('tag/a:v'), rs[0], 'memory is unaffected')

    await store.flush()
    assert.equal(state.calls, 2)
    assert.equal(store.stats().pendingWrites, 0)
    for (const r of [...rs, tomb]) assert.deepEqual(await d.records.get(r.key), toWire(r))
  })

  it('does not let a retried old write overwrite a newer one made while the batch was failing', async () => {
    const d = await freshDb()
    let release = () => {}
    const gate = new Promise<void>((r) => {
      release = r
    })
    const { records } = failingBatches(d.records, 1, gate)
    const store = newStore({ records, meta: d.meta })
    await store.load()
    await store.put('tag/a:v', { v: 1 })
    await store.put('tag/b:v', { v: 1 })
    const failing = store.flush()
    const rejected = assert.rejects(failing, isCode('ERR_DISK'))
    await new Promise((r) => setImmediate(r)) // the batch is now in flight
    const newer = await store.put('tag/a:v', { v: 2 })
    release()
    await rejected
    await store.flush()
    assert.deepEqual(await d.records.get('tag/a:v'), toWire(newer))
    assert.deepEqual(await d.records.get('tag/b:v'), toWire(store.get('tag/b:v') as SignedRecord))
  })

  it('a durable put that cannot reach the disk fails with ERR_DISK and does not happen', async () => {
    const d = await freshDb()
    const { records } = failingBatches(d.records, 1)
    const store = newStore({ records, meta: d.meta }, { flushDelayMs: 20 })
    await store.load()
    const changes: StoreChange[] = []
    store.onChange((c) => changes.push(c))
    await assert.rejects(store.put(`label/${B}`, { zone: 'kitchen' }, { durable: true }), isCode('ERR_DISK'))
    assert.equal(store.get(`label/${B}`), undefined, 'not applied')
    assert.equal(changes.length, 0, 'not announced (so not gossiped)')
    assert.equal(await d.records.get(`label/${B}`), undefined)
    const r = await store.put(`label/${B}`, { zone: 'garage' }, { durable: true })
    assert.deepEqual(await d.records.get(`label/${B}`), toWire(r), 'the next write lands')
  })
})

// ---- the gate for remote records -----------------------------------------------------------------------

describe('Store.applyRemote', () => {
  async function seeded() {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    const old = { wall: NOW - 1_000, counter: 0 }
    for (const r of [
      await remote(keyB, `label/${B}`, { zone: 'a' }, old),
      await remote(keyB, 'tag/web:v', { v: 0 }, old),
      await remote(keyB, `node/${B}`, nodeValue('pi-b'), old),
    ])
      assert.equal(await store.applyRemote(r, B), 'applied')
    return store
  }

  it('applies a valid newer record from another author, emits a remote change, then calls it stale', async () => {
    const store = await seeded()
    const changes: StoreChange[] = []
    store.onChange((c) => changes.push(c))
    const rec = await remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW, counter: 0 })
    const applied = store.stats().applied

    assert.equal(await store.applyRemote(rec, B), 'applied')
    assert.deepEqual(store.get('tag/web:v'), rec)
    assert.equal(changes.length, 1)
    assert.equal(changes[0]?.origin, 'remote')
    assert.equal(changes[0]?.key, 'tag/web:v')
    assert.deepEqual(changes[0]?.record, rec)
    assert.equal(store.stats().applied, applied + 1)

    const digest = hex(store.digest())
    const stale = store.stats().stale
    assert.equal(await store.applyRemote(rec, B), 'stale')
    const older = await remote(keyB, 'tag/web:v', { v: 9 }, { wall: NOW - 500, counter: 0 })
    assert.equal(await store.applyRemote(older, B), 'stale')
    assert.equal(store.stats().stale, stale + 2)
    assert.equal(changes.length, 1)
    assert.equal(hex(store.digest()), digest)
  })

  it('moves its own clock past an applied remote clock, so the next local write wins', async () => {
    const store = await seeded()
    const ahead = await remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW + 30_000, counter: 5 })
    assert.equal(await store.applyRemote(ahead, B), 'applied')
    const mine = await store.put('tag/web:v', { v: 2 })
    assert.ok(supersedes(mine, ahead))
    assert.deepEqual(store.get('tag/web:v'), mine)
  })

  const hostile: Array<[string, ApplyResult, () => Promise<SignedRecord>]> = [
    [
      'a changed value under the old signature',
      'bad-signature',
      async () => ({
        ...(await remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW, counter: 0 })),
        value: { v: 666 },
      }),
    ],
    [
      'a flipped signature bit',
      'bad-signature',
      async () => {
        const r = await remote(keyB, `label/${B}`, { zone: 'b' }, { wall: NOW, counter: 0 })
        const sig = new Uint8Array(r.sig)
        sig[10] = (sig[10] ?? 0) ^ 1
        return { ...r, sig }
      },
    ],
    [
      'a record that names B as author but is signed by C',
      'bad-signature',
      async () => ({
        ...(await remote(keyC, `label/${B}`, { zone: 'c' }, { wall: NOW, counter: 0 })),
        author: B,
      }),
    ],
    [
      "B's node record written by C",
      'forged-owner',
      () => remote(keyC, `node/${B}`, nodeValue('evil'), { wall: NOW, counter: 0 }),
    ],
    [
      "B's container status written by C",
      'forged-owner',
      () => remote(keyC, `status/${B}/web`, statusValue(0), { wall: NOW, counter: 0 }),
    ],
    [
      'a label value with spaces',
      'invalid-value',
      () => remote(keyB, `label/${B}`, { zone: 'has space' }, { wall: NOW, counter: 0 }),
    ],
    [
      'a node record missing its fields',
      'invalid-value',
      () => remote(keyB, `node/${B}`, { name: 'pi-b' }, { wall: NOW, counter: 0 }),
    ],
    [
      'a key outside the key space',
      'unknown-key',
      () => remote(keyB, 'secrets/root', { password: 'x' }, { wall: NOW, counter: 0 }),
    ],
    [
      'a key with an invalid name',
      'unknown-key',
      () => remote(keyB, 'tag/Web:v', { v: 1 }, { wall: NOW, counter: 0 }),
    ],
    [
      'a clock ten minutes in the future',
      'clock-drift',
      () => remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW + 10 * 60_000, counter: 0 }),
    ],
    [
      'a clock just past the allowed drift',
      'clock-drift',
      () => remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW + MAX_DRIFT_MS + 1, counter: 0 }),
    ],
    [
      'a value above the size limit',
      'oversized',
      () => remote(keyB, 'tag/web:v', { pad: 'x'.repeat(MAX_RECORD_BYTES) }, { wall: NOW, counter: 0 }),
    ],
    [
      'a negative clock counter',
      'malformed',
      () => remote(keyB, 'tag/web:v', { v: 1 }, { wall: NOW, counter: -1 }),
    ],
  ]

  for (const [what, reason, make] of hostile) {
    it(`drops ${what} as ${reason}, counts it, and changes nothing`, async () => {
      const store = await seeded()
      const rec = await make()
      const digest = hex(store.digest())
      const snapshot = new Map(store.all())
      const before = store.stats()
      const changes: StoreChange[] = []
      store.onChange((c) => changes.push(c))

      assert.equal(await store.applyRemote(rec, 'peer-x'), reason)
      const after = store.stats()
      assert.equal(
        after.dropped[reason as keyof typeof after.dropped],
        before.dropped[reason as keyof typeof before.dropped] + 1,
      )
      const total = (s: typeof after) => Object.values(s.dropped).reduce((a, b) => a + b, 0)
      assert.equal(total(after), total(before) + 1)
      assert.equal(after.applied, before.applied)
      assert.equal(hex(store.digest()), digest)
      assert.deepEqual(new Map(store.all()), snapshot)
      assert.deepEqual(changes, [])
      assert.equal(after.pendingWrites, before.pendingWrites)
    })
  }
})

// ---- watch and garbage collection ----------------------------------------------------------------------

describe('Store.watch', () => {
  it('yields changes under the prefix only, local and remote, and ends when the signal aborts', {
    timeout: 3_000,
  }, async () => {
    const d = await freshDb()
    const store = newStore(d)
    await store.load()
    await store.put('tag/before:v', { v: 0 })
    const ac = new AbortController()
    const seen: StoreChange[] = []
    let ended = false
    const consumer = (async () => {
      for await (const c of store.watch('tag/', ac.signal)) seen.push(c)
      ended = true
    })()

    await store.put(`label/${A}`, { port: '1' })
    await store.put('tag/a:v', { v: 1 })
    await store.put(`label/${B}`, { zone: 'k' })
    const fromB = await remote(keyB, 'tag/b:v', { v: 1 }, { wall: NOW, counter: 0 })
    await store.applyRemote(fromB, B)
    await store.delete('tag/a:v')
    await until('three changes', () => seen.length >= 3)
    assert.equal(ended, false)

    ac.abort()
    await consumer
    assert.equal(ended, true)
    await store.put('tag/late:v', { v: 1 })
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(
      seen.map((c) => [c.key, c.origin, c.record.deleted]),
      [
        ['tag/a:v', 'local', false],
        ['tag/b:v', 'remote', false],
        ['tag/a:v', 'local', true],
      ],
    )
    assert.deepEqual(seen[1]?.record, fromB)
  })

  it('ends at once for a signal that is already aborted', { timeout: 2_000 }, async () => {
    const store = newStore(await freshDb())
    const items: StoreChange[] = []
    for await (const c of store.watch('', AbortSignal.abort())) items.push(c)
    assert.deepEqual(items, [])
  })
})

describe('Store.collectGarbage', () => {
  it('removes tombstones older than the horizon only, in memory and on disk', async () => {
    const d = await freshDb()
    let clock = NOW
    const store = newStore(d, { now: () => clock, tombstoneHorizonMs: 500 })
    await store.load()
    await store.put('tag/old-live:v', { v: 1 })
    await store.delete('tag/old-dead:v')
    clock = NOW + 1_000
    await store.delete('tag/new-dead:v')
    await store.stop() // all three on disk
    assert.ok(await d.records.get('tag/old-dead:v'))

    clock = NOW + 1_200 // old records are 1,200 ms old, new-dead 200 ms: horizon 500 ms
    const digest = hex(store.digest())
    assert.equal(store.collectGarbage(), 1)
    assert.deepEqual([...store.all().keys()].sort(), ['tag/new-dead:v', 'tag/old-live:v'])
    assert.notEqual(hex(store.digest()), digest)
    assert.equal(hex(store.digest()), hex(computeDigest(store.all())))
    assert.equal(store.collectGarbage(), 0, 'nothing left to collect')
    await store.flush()
    assert.equal(await d.records.get('tag/old-dead:v'), undefined)
    assert.ok(await d.records.get('tag/new-dead:v'))
    assert.ok(await d.records.get('tag/old-live:v'))
  })
})

describe('Store.fingerprint', () => {
  it("is the digest's fingerprint once the store has been quiet for quietMs, and none while it changes", async () => {
    const d = await freshDb()
    let clock = NOW
    const store = newStore(d, { now: () => clock })
    await store.load()
    const empty = store.fingerprint(500)
    assert.equal(empty, digestFingerprint(computeDigest(new Map())), 'a loaded store is quiet at once')
    await store.put('tag/a:v', { v: 1 })
    assert.equal(store.fingerprint(500), undefined, 'just changed')
    clock += 499
    assert.equal(store.fingerprint(500), undefined)
    clock += 1
    const one = store.fingerprint(500)
    assert.equal(one, digestFingerprint(store.digest()))
    assert.notEqual(one, empty)
    assert.equal(store.fingerprint(500), one, 'stable while nothing changes')
    // A remote record changes it too; an equal replica has an equal fingerprint.
    const other = newStore(await freshDb(), { now: () => clock })
    await other.load()
    const record = store.get('tag/a:v')
    assert.ok(record)
    assert.equal(await other.applyRemote(record, A), 'applied')
    clock += 500
    assert.equal(other.fingerprint(500), one)
    await store.delete('tag/a:v')
    clock += 500
    assert.notEqual(store.fingerprint(500), one)
  })
})

// ---- convergence ---------------------------------------------------------------------------------------

describe('Store: replicas converge', () => {
  it('two stores that exchange all records via applyRemote, in any order and with duplicates, end equal', async () => {
    const d = await freshDb()
    let run = 0
    const shared = ['tag/a:v', 'tag/b:v', 'tag/s:v', 'tag/t:1', `label/${A}`, `label/${B}`]
    const arbOp = fc.record({
      who: fc.integer({ min: 0, max: 1 }),
      key: fc.integer({ min: 0, max: shared.length }), // shared.length: the writer's own status record
      del: fc.boolean(),
      v: fc.integer({ min: 0, max: 3 }),
      dt: fc.integer({ min: 0, max: 3 }),
    })
    const arbOrder = fc.record({
      keys: fc.array(fc.nat(1_000), { minLength: 1, maxLength: 40 }),
      dups: fc.array(fc.nat(), { maxLength: 10 }),
    })
    const arrange = <T>(items: T[], o: { keys: number[]; dups: number[] }): T[] => {
      const all = items.length === 0 ? [] : [...items, ...o.dups.map((j) => items[j % items.length] as T)]
      return all
        .map((x, i) => ({ x, i, k: o.keys[i % o.keys.length] ?? 0 }))
        .sort((p, q) => p.k - q.k || p.i - q.i)
        .map((p) => p.x)
    }

    await fc.assert(
      fc.asyncProperty(
        fc.array(arbOp, { maxLength: 16 }),
        fc.integer({ min: -30_000, max: 30_000 }),
        arbOrder,
        arbOrder,
        async (ops, skew, orderToA, orderToB) => {
          run++
          const clocks = [NOW, NOW + skew]
          const stores = [keyA, keyB].map((privateKey, i) =>
            newStore(
              {
                records: d.db.sublevel<string, WireRecord>(`r${run}-${i}`, { valueEncoding: 'json' }),
                meta: d.db.sublevel<string, unknown>(`m${run}-${i}`, { valueEncoding: 'json' }),
              },
              { privateKey, now: () => clocks[i] ?? NOW },
            ),
          ) as [Store, Store]
          for (const op of ops) {
            const store = stores[op.who] as Store
            clocks[op.who] = (clocks[op.who] ?? NOW) + op.dt
            const key = shared[op.key] ?? `status/${store.selfId}/c`
            const value: JsonValue = key.startsWith('label/')
              ? { k: `v${op.v}` }
              : key.startsWith('status/')
                ? statusValue(op.v)
                : { v: op.v }
            if (op.del) await store.delete(key)
            else await store.put(key, value)
          }
          const [a, b] = stores
          const fromA = [...a.all().values()]
          const fromB = [...b.all().values()]
          const expected = hex(computeDigest(mergeMaps(a.all(), b.all())))
          for (const r of arrange(fromB, orderToA))
            assert.ok(['applied', 'stale'].includes(await a.applyRemote(r, B)))
          for (const r of arrange(fromA, orderToB))
            assert.ok(['applied', 'stale'].includes(await b.applyRemote(r, A)))
          assert.equal(hex(a.digest()), hex(b.digest()))
          assert.equal(hex(a.digest()), expected)
          for (const s of stores) assert.ok(Object.values(s.stats().dropped).every((n) => n === 0))
          await Promise.all(stores.map((s) => s.stop()))
        },
      ),
      { numRuns: 60 },
    )
  })
})
