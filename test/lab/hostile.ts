// A hostile member for the lab: it holds the cluster key (so the private network lets it in) but sends
// forged, invalid, oversized and garbage records on gossip and garbage on the sync protocol.
// Usage (inside a lab node's namespace): node test/lab/hostile.ts DATA_DIR LISTEN_ADDR VICTIM_PEER_ID
import { generateKeyPair } from '@libp2p/crypto/keys'
import { Level } from 'level'
import { createLogger } from '../../src/common/logger.ts'
import { dataPaths } from '../../src/common/paths.ts'
import { createMesh, loadOrCreateIdentity, readClusterSecret } from '../../src/mesh/index.ts'
import type { PeerBookEntry } from '../../src/mesh/peer-book.ts'
import {
  encodeRecord,
  type SignedRecord,
  STATE_TOPIC,
  SYNC_PROTOCOL,
  signRecord,
} from '../../src/state/index.ts'

const [dataDir = '', listen = '', victim = ''] = process.argv.slice(2)
const paths = dataPaths(dataDir)
const secret = await readClusterSecret(paths.clusterKey)
if (!secret) throw new Error(`no cluster key in ${dataDir}`)
const privateKey = await loadOrCreateIdentity(paths.identity)
const db = new Level<string, unknown>(`${dataDir}/hostile-db`, { valueEncoding: 'json' })
await db.open()
const mesh = await createMesh({
  privateKey,
  clusterSecret: secret,
  listen: [listen],
  peers: [],
  peerBookStore: db.sublevel<string, PeerBookEntry>('peers', { valueEncoding: 'json' }),
  logger: createLogger({ level: 'warn' }),
})
await mesh.start()
const pubsub = mesh.libp2p.services.pubsub
pubsub.subscribe(STATE_TOPIC)

const deadline = Date.now() + 20_000
while (pubsub.getSubscribers(STATE_TOPIC).length === 0 || mesh.connectedPeers().length === 0) {
  if (Date.now() > deadline) throw new Error('the hostile peer found no honest node')
  await new Promise((r) => setTimeout(r, 100))
}
await new Promise((r) => setTimeout(r, 500))

const now = Date.now()
const hlc = { wall: now, counter: 0 }
const nodeValue = {
  name: 'evil',
  arch: 'amd64',
  cpus: 64,
  memory: 1,
  version: '0.1.0',
  addresses: [],
  startedAt: now,
  wgPublicKey: null,
}
const tampered = async (): Promise<SignedRecord> => {
  const r = await signRecord(privateKey, {
    key: `label/${victim}`,
    value: { owner: 'me' },
    hlc,
    deleted: false,
  })
  return { ...r, value: { owner: 'someone-else' } }
}
const otherKey = await generateKeyPair('Ed25519')
const impostor = await signRecord(otherKey, {
  key: `label/${victim}`,
  value: { x: 'y' },
  hlc,
  deleted: false,
})
const attacks: Array<[string, Uint8Array]> = [
  [
    'forged owner',
    encodeRecord(
      await signRecord(privateKey, { key: `node/${victim}`, value: nodeValue, hlc, deleted: false }),
    ),
  ],
  ['bad signature', encodeRecord(await tampered())],
  ['author swapped', encodeRecord({ ...impostor, author: mesh.peerId.toString() })],
  [
    'invalid value',
    encodeRecord(
      await signRecord(privateKey, { key: `label/${victim}`, value: { 'bad key!': 1 }, hlc, deleted: false }),
    ),
  ],
  [
    'unknown key',
    encodeRecord(await signRecord(privateKey, { key: 'secrets/all', value: { a: 1 }, hlc, deleted: false })),
  ],
  [
    'clock drift',
    encodeRecord(
      await signRecord(privateKey, {
        key: `label/${victim}`,
        value: { late: 'yes' },
        hlc: { wall: now + 3_600_000, counter: 0 },
        deleted: false,
      }),
    ),
  ],
  [
    'oversized',
    encodeRecord(
      await signRecord(privateKey, {
        key: 'service/huge',
        value: { blob: 'x'.repeat(80_000) },
        hlc,
        deleted: false,
      }),
    ),
  ],
  ['garbage', new Uint8Array(Array.from({ length: 500 }, (_, i) => (i * 37 + 11) % 256))],
  ['not json', new TextEncoder().encode('{"v":1,"key":')],
]
for (const [what, data] of attacks) {
  try {
    await pubsub.publish(STATE_TOPIC, data)
  } catch (err) {
    process.stdout.write(`publish ${what} failed: ${(err as Error).message}\n`)
  }
}

// Garbage on the sync protocol: a length prefix promising more than a frame may hold, then noise; then
// a well-framed message that is not a sync frame.
for (const peer of mesh.connectedPeers()) {
  for (const payload of [
    new Uint8Array([0xff, 0xff, 0xff, 0x7f, 1, 2, 3]),
    new Uint8Array([5, 0x68, 0x65, 0x6c, 0x6c, 0x6f]),
  ]) {
    try {
      const stream = await mesh.libp2p.dialProtocol(peer, SYNC_PROTOCOL, {
        signal: AbortSignal.timeout(5_000),
      })
      stream.send(payload)
      await new Promise((r) => setTimeout(r, 200))
      stream.abort(new Error('done'))
    } catch (err) {
      process.stdout.write(`sync garbage to ${peer} failed: ${(err as Error).message}\n`)
    }
  }
}
await new Promise((r) => setTimeout(r, 1_000))
process.stdout.write('hostile: sent everything\n')
await mesh.stop()
await db.close()
