import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import type { MessageStream } from '@libp2p/interface'
import { multiaddrConnectionPair } from '@libp2p/utils'
import {
  COALESCE_BYTES,
  clusterProtector,
  directionKey,
  keystream,
  PNET_NONCE_BYTES,
} from '../../../src/mesh/pnet.ts'

/** Everything `stream` receives until `bytes` have arrived, as one buffer. */
function receive(stream: MessageStream, bytes: number): Promise<Buffer> {
  const parts: Uint8Array[] = []
  let got = 0
  return new Promise((resolve) => {
    stream.addEventListener('message', (evt) => {
      const data = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()
      parts.push(data)
      got += data.byteLength
      if (got >= bytes) resolve(Buffer.concat(parts))
    })
  })
}

describe('mesh/pnet: the private network', () => {
  it('derives a different key for every nonce and every secret', () => {
    const s1 = randomBytes(32)
    const n1 = randomBytes(PNET_NONCE_BYTES)
    assert.notDeepEqual(directionKey(s1, n1), directionKey(s1, randomBytes(PNET_NONCE_BYTES)))
    assert.notDeepEqual(directionKey(s1, n1), directionKey(randomBytes(32), n1))
    assert.deepEqual(directionKey(s1, n1), directionKey(Buffer.from(s1), Buffer.from(n1)))
  })

  it('a keystream decrypts whatever the chunking', () => {
    const secret = randomBytes(32)
    const nonce = randomBytes(PNET_NONCE_BYTES)
    const plain = randomBytes(200_000)
    const sealed = keystream(secret, nonce)(plain)
    assert.notDeepEqual(sealed.subarray(0, 64), plain.subarray(0, 64))
    const open = keystream(secret, nonce)
    const parts = [1, 63, 64, 1000, 65_536, 133_336].reduce<{ off: number; out: Uint8Array[] }>(
      (acc, len) => ({
        off: acc.off + len,
        out: [...acc.out, open(sealed.subarray(acc.off, acc.off + len))],
      }),
      { off: 0, out: [] },
    )
    assert.deepEqual(Buffer.concat(parts.out), plain)
  })

  it('two nodes of one cluster exchange bytes both ways, encrypted on the wire', async () => {
    const secret = randomBytes(32)
    const [outRaw, inRaw] = multiaddrConnectionPair()
    // What a sniffer sees: everything the outbound side hands to its raw connection.
    const wire: Uint8Array[] = []
    const rawSend = outRaw.send.bind(outRaw)
    outRaw.send = (data) => {
      wire.push(data instanceof Uint8Array ? data : data.subarray())
      return rawSend(data)
    }
    const [a, b] = await Promise.all([
      clusterProtector(secret)().protect(outRaw),
      clusterProtector(secret)().protect(inRaw),
    ])
    const ab = randomBytes(300_000)
    const ba = Buffer.from('pong')
    const gotB = receive(b, ab.byteLength)
    const gotA = receive(a, ba.byteLength)
    a.send(ab)
    b.send(ba)
    assert.deepEqual(await gotB, ab)
    assert.deepEqual(await gotA, ba)
    const onWire = Buffer.concat(wire)
    assert.equal(onWire.indexOf(ab.subarray(0, 32)), -1, 'the plaintext must not appear on the wire')
  })

  it('small frames sent in one turn leave in one write, in order; large ones at once', async () => {
    const secret = randomBytes(32)
    const [outRaw, inRaw] = multiaddrConnectionPair()
    const writes: number[] = []
    const rawSend = outRaw.send.bind(outRaw)
    const [a, b] = await Promise.all([
      clusterProtector(secret)().protect(outRaw),
      clusterProtector(secret)().protect(inRaw),
    ])
    outRaw.send = (data) => {
      writes.push(data.byteLength)
      return rawSend(data)
    }
    const small = Array.from({ length: 20 }, (_, i) => Buffer.from(`frame ${i};`))
    const big = randomBytes(COALESCE_BYTES * 2)
    const all = Buffer.concat([...small, big, ...small])
    const got = receive(b, all.byteLength)
    for (const f of small) a.send(f)
    assert.deepEqual(writes, [], 'nothing written before the end of the turn')
    a.send(big)
    const before = small.reduce((n, f) => n + f.byteLength, 0)
    assert.deepEqual(writes, [before, big.byteLength], 'waiting frames first, then the large one at once')
    for (const f of small) a.send(f)
    assert.deepEqual(await got, all)
    assert.deepEqual(writes, [before, big.byteLength, before], 'the second batch in one write too')
  })

  it('a close sends what waits first', async () => {
    const secret = randomBytes(32)
    const [outRaw, inRaw] = multiaddrConnectionPair()
    const [a, b] = await Promise.all([
      clusterProtector(secret)().protect(outRaw),
      clusterProtector(secret)().protect(inRaw),
    ])
    const msg = Buffer.from('last words')
    const got = receive(b, msg.byteLength)
    a.send(msg)
    await a.close()
    assert.deepEqual(await got, msg)
  })

  it('a node with another secret reads only noise', async () => {
    const [outRaw, inRaw] = multiaddrConnectionPair()
    const [a, b] = await Promise.all([
      clusterProtector(randomBytes(32))().protect(outRaw),
      clusterProtector(randomBytes(32))().protect(inRaw),
    ])
    const msg = Buffer.from('/multistream/1.0.0\n')
    const got = receive(b, msg.byteLength)
    a.send(msg)
    assert.notDeepEqual(await got, msg)
  })

  it('gives up when the other side never sends its nonce', async () => {
    const [outRaw] = multiaddrConnectionPair()
    await assert.rejects(clusterProtector(randomBytes(32), 100)().protect(outRaw))
  })
})
