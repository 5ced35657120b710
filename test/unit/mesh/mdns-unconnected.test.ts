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
import { mdns } from '@libp2p/mdns'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { TypedEventEmitter } from 'main-event'
import {
  answeredPeer,
  dropAnswersEarly,
  type MdnsResponse,
  unconnectedMdns,
  withoutConnected,
} from '../../../src/mesh/mdns-unconnected.ts'

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

  const TAG = '_km1s-test._udp.local'
  const answer = (peer: string, where: 'answers' | 'additionals' = 'answers'): MdnsResponse => {
    const txt = {
      name: `x.${TAG}`,
      type: 'TXT',
      data: [Buffer.from('other=1'), Buffer.from(`dnsaddr=/ip4/198.18.0.2/tcp/4001/p2p/${peer}`)],
    }
    const ptr = { name: TAG, type: 'PTR', data: `x.${TAG}` }
    return where === 'answers'
      ? { answers: [ptr, txt], additionals: [] }
      : { answers: [ptr], additionals: [txt] }
  }

  it('reads the peer an answer is about as @libp2p/mdns does, without decoding it', () => {
    assert.equal(answeredPeer(answer('12D3KooWA')), '12D3KooWA')
    assert.equal(answeredPeer(answer('12D3KooWB', 'additionals')), '12D3KooWB')
    const relayed = {
      answers: [{ type: 'TXT', data: 'dnsaddr=/ip4/198.18.0.9/tcp/1/p2p/R/p2p-circuit/p2p/Q' }],
    }
    assert.equal(answeredPeer(relayed), 'Q', 'the last /p2p/ part')
    assert.equal(
      answeredPeer({ answers: [{ type: 'TXT', data: [Buffer.from('dnsaddr=/ip4/198.18.0.2/tcp/1')] }] }),
      undefined,
    )
    assert.equal(answeredPeer({ answers: [{ type: 'A', data: '198.18.0.2' }] }), undefined)
    assert.equal(answeredPeer({}), undefined)
  })

  it('drops answers about connected peers before libp2p mDNS parses them, and passes the others', async () => {
    const [a, b] = [await newPeer(), await newPeer()]
    const inner = mdns({ serviceTag: TAG })({
      logger: defaultLogger(),
      addressManager: { getAddresses: () => [] } as never,
    })
    const seen: string[] = []
    inner.addEventListener('peer', (evt) => seen.push(evt.detail.id.toString()))
    let drops = 0
    assert.equal(
      dropAnswersEarly(
        inner,
        (p) => p === a.toString(),
        () => drops++,
      ),
      true,
      '@libp2p/mdns still has the response handler this replaces',
    )
    const respond = (inner as unknown as { _onMdnsResponse(rsp: MdnsResponse): void })._onMdnsResponse
    respond(answer(a.toString()))
    respond(answer(b.toString()))
    respond(answer('not-a-peer-id')) // unconnected: libp2p parses it, fails and logs; nothing is found
    assert.deepEqual(seen, [b.toString()])
    assert.equal(drops, 1)
  })

  it('leaves a discovery without that handler as it was', () => {
    assert.equal(
      dropAnswersEarly(
        new FakeDiscovery(),
        () => true,
        () => {},
      ),
      false,
    )
  })
})
