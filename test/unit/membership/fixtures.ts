// What membership tests share: a real Store in a temporary LevelDB on a fake clock, node records, a bus.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after } from 'node:test'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { Level } from 'level'
import { pino } from 'pino'
import { type ConnectionEvents, type HeartbeatBus, Membership } from '../../../src/membership/membership.ts'
import { type NodeValue, Store, type WireRecord } from '../../../src/state/index.ts'

export const silent = pino({ level: 'silent' })

/**
 * A replication round period for tests that count sessions. Rounds run on the wall-clock grid
 * (common/grid.ts): with the default 30 s, a test that ran across a :00 or :30 saw a round's session too
 * (CI, stop 23). Grid points 20 days apart never fall inside a test; a timer longer than 2^31 ms would fire
 * at once.
 */
export const NO_ROUNDS_MS = 20 * 24 * 3600_000
const cleanups: Array<() => Promise<unknown>> = []
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => undefined)
})

export const info = (name: string): NodeValue => ({
  name,
  arch: 'amd64',
  cpus: 2,
  memory: 1 << 30,
  version: '0.1.0',
  addresses: [],
  startedAt: 1,
  wgPublicKey: null,
})

/** A loaded store signing with `key`, on the clock `now`; closed and removed after the file. */
export async function tempStore(key: PrivateKey, now: () => number): Promise<Store> {
  const dir = await mkdtemp(join(tmpdir(), 'km1s-membership-'))
  const db = new Level<string, unknown>(dir, { valueEncoding: 'json' })
  await db.open()
  const store = new Store({
    records: db.sublevel<string, WireRecord>('records', { valueEncoding: 'json' }),
    meta: db.sublevel<string, unknown>('meta', { valueEncoding: 'json' }),
    privateKey: key,
    logger: silent,
    now,
  })
  await store.load()
  cleanups.push(
    () => store.stop(),
    () => db.close(),
    () => rm(dir, { recursive: true, force: true }),
  )
  return store
}

/** A bus that keeps what is published on it. */
export function fakeBus(): HeartbeatBus & { published: Uint8Array[] } {
  const published: Uint8Array[] = []
  return {
    published,
    subscribe() {},
    unsubscribe() {},
    publish: async (_topic: string, data: Uint8Array) => {
      published.push(data)
      return { recipients: [] }
    },
    addEventListener() {},
    removeEventListener() {},
    topicValidators: new Map(),
  } as unknown as HeartbeatBus & { published: Uint8Array[] }
}

/** A membership of node `n1` on a fake clock, 3 s suspect and 5 s dead. */
export function testMembership(init: {
  self: PeerId
  bus: HeartbeatBus
  connections: ConnectionEvents
  store: Store
  now: () => number
}): Membership {
  return new Membership({
    ...init,
    selfInfo: () => info('n1'),
    logger: silent,
    detector: { suspectMs: 3_000, deadMs: 5_000 },
  })
}
