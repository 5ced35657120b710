import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import {
  type PeerDiscovery,
  type PeerDiscoveryEvents,
  type PeerDiscoveryProvider,
  type PeerId,
  type PeerInfo,
  peerDiscoverySymbol,
} from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { TypedEventEmitter } from 'main-event'
import { unconnectedMdns, withoutConnected } from '../../../src/mesh/mdns-unconnected.ts'

class FakeDiscovery extends TypedEventEmitter<PeerDiscoveryEvents> implements PeerDiscovery {
  readonly [peerDiscoverySymbol] = this
  readonly [Symbol.toStringTag] = 'fake'
  calls: string[] = []
  async start() {
    this.calls.push('start')
  }
  async stop() {
    this.calls.push('stop')
  }
}

const newPeer = async (): Promise<PeerId> => peerIdFromPrivateKey(await generateKeyPair('Ed25519'))

describe('mesh/mdns-unconnected', () => {
  it('passes discoveries of unconnected peers and drops those of connected ones', async () => {
    const [a, b] = [await newPeer(), await newPeer()]
    const connected = new Set([a.toString()])
    const inner = new FakeDiscovery()
    const d = withoutConnected(inner, (p) => connected.has(p.toString()))
    const seen: PeerInfo[] = []
    d.addEventListener('peer', (evt) => seen.push(evt.detail))
    inner.safeDispatchEvent('peer', { detail: { id: a, multiaddrs: [] } })
    inner.safeDispatchEvent('peer', { detail: { id: b, multiaddrs: [] } })
    assert.deepEqual(
      seen.map((p) => p.id.toString()),
      [b.toString()],
    )
    assert.equal(d.dropped, 1)
    connected.delete(a.toString()) // the connection went, e.g. a split: its next answer counts again
    inner.safeDispatchEvent('peer', { detail: { id: a, multiaddrs: [] } })
    assert.equal(seen.at(-1)?.id.toString(), a.toString())
  })

  it('starts and stops the discovery it wraps', async () => {
    const inner = new FakeDiscovery()
    const d = withoutConnected(inner, () => false)
    await d.start()
    await d.stop()
    assert.deepEqual(inner.calls, ['start', 'stop'])
    assert.equal((d as Partial<PeerDiscoveryProvider>)[peerDiscoverySymbol], d, 'libp2p finds it')
  })

  it('wraps libp2p mDNS as libp2p configures it', async () => {
    const d = unconnectedMdns({ serviceTag: '_km1s-test._udp.local' })({
      logger: defaultLogger(),
      addressManager: { getAddresses: () => [] } as never,
      connectionManager: { getConnections: () => [] },
    })
    assert.equal((d as Partial<PeerDiscoveryProvider>)[peerDiscoverySymbol], d)
    assert.equal(typeof d.start, 'function')
  })
})
