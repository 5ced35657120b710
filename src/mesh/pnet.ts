// The private network: every connection is encrypted with a key derived from the cluster secret before
// anything else is said on it, so a node without the secret cannot even complete multistream-select.
//
// Hand-written rather than @libp2p/pnet because of its cipher: pnet's xsalsa20 runs in WebAssembly at
// ~630 MB/s here (and grows its memory until the agent dies: PLATFORM.md), and every byte of every transfer
// passes through it twice. This is the same construction with the host's OpenSSL ChaCha20 (~2.7 GB/s here,
// NEON on a Pi): each side sends a random 24-byte nonce, and each direction is keyed with
// HKDF-SHA256(secret, nonce), so no key/nonce pair is ever reused and the counter can start at zero. As with
// pnet this gives confidentiality only; noise, inside it, authenticates peers and every frame. Not
// wire-compatible with @libp2p/pnet: all nodes of a cluster must run a km1s with the same protector.
import { createCipheriv, hkdfSync, randomBytes } from 'node:crypto'
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface'
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils'
import type { Uint8ArrayList } from 'uint8arraylist'

export const PNET_NONCE_BYTES = 24
const KEY_INFO = 'km1s pnet/1 chacha20'
/** OpenSSL's ChaCha20 IV: a 32-bit block counter then a 96-bit nonce, all zero for a fresh key. */
const ZERO_IV = Buffer.alloc(16)

/** The key for the direction whose sender chose `nonce` (pure, for tests). */
export function directionKey(secret: Uint8Array, nonce: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, nonce, KEY_INFO, 32))
}

/** A keystream for one direction: XORs bytes in order, whatever their chunking. */
export function keystream(secret: Uint8Array, nonce: Uint8Array): (data: Uint8Array) => Uint8Array {
  const cipher = createCipheriv('chacha20', directionKey(secret, nonce), ZERO_IV)
  return (data) => cipher.update(data)
}

class ChaChaConnection extends AbstractMultiaddrConnection {
  readonly #inner: MessageStream
  readonly #seal: (data: Uint8Array) => Uint8Array

  constructor(
    inner: MultiaddrConnection,
    secret: Uint8Array,
    localNonce: Uint8Array,
    remoteNonce: Uint8Array,
  ) {
    super({ log: inner.log, remoteAddr: inner.remoteAddr, direction: inner.direction })
    this.#inner = inner
    this.#seal = keystream(secret, localNonce)
    const open = keystream(secret, remoteNonce)
    inner.addEventListener('message', (evt) => {
      const data: Uint8Array | Uint8ArrayList = evt.data
      if (data instanceof Uint8Array) this.onData(open(data))
      else for (const buf of data) this.onData(open(buf))
    })
    inner.addEventListener('drain', () => this.onMuxerDrain())
    inner.addEventListener('close', (evt) => {
      if (evt.error == null) this.onTransportClosed()
      else if (evt.local) this.abort(evt.error)
      else this.onRemoteReset()
    })
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    await this.#inner.close(options)
  }

  sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean } {
    return { sentBytes: data.byteLength, canSendMore: this.#inner.send(this.#seal(data.subarray())) }
  }

  sendReset(err: Error): void {
    this.#inner.abort(err)
  }

  sendPause(): void {
    this.#inner.pause()
  }

  sendResume(): void {
    this.#inner.resume()
  }
}

class ChaChaProtector implements ConnectionProtector {
  readonly #secret: Uint8Array
  readonly #timeoutMs: number

  constructor(secret: Uint8Array, timeoutMs: number) {
    this.#secret = secret
    this.#timeoutMs = timeoutMs
  }

  readonly [Symbol.toStringTag] = 'km1s-pnet'

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    const localNonce = randomBytes(PNET_NONCE_BYTES)
    const opts = options ?? { signal: AbortSignal.timeout(this.#timeoutMs) }
    const bytes = byteStream(connection)
    const [remote] = await Promise.all([
      bytes.read({ bytes: PNET_NONCE_BYTES, ...opts }),
      bytes.write(localNonce, opts),
    ])
    return new ChaChaConnection(
      bytes.unwrap() as MultiaddrConnection,
      this.#secret,
      localNonce,
      remote.subarray(),
    )
  }
}

/** libp2p's `connectionProtector` for a cluster: the secret is the cluster secret itself. */
export function clusterProtector(secret: Uint8Array, timeoutMs = 1_000): () => ConnectionProtector {
  return () => new ChaChaProtector(secret, timeoutMs)
}
