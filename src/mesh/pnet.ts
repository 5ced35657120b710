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

/**
 * Frames smaller than this, sent in one turn of the event loop, leave as one socket write (see `sendData`);
 * larger ones are written at once, after whatever waits before them.
 */
export const COALESCE_BYTES = 16 * 1024

class ChaChaConnection extends AbstractMultiaddrConnection {
  readonly #inner: MessageStream
  readonly #seal: (data: Uint8Array) => Uint8Array
  /** Sealed frames waiting for the end of this turn of the event loop, in order. */
  #pending: Uint8Array[] = []
  #pendingBytes = 0
  #flushQueued = false
  /** The socket refused more at the last write: tell the muxer to wait for its drain. */
  #innerFull = false

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
    inner.addEventListener('drain', () => {
      this.#innerFull = false
      this.onMuxerDrain()
    })
    inner.addEventListener('close', (evt) => {
      if (evt.error == null) this.onTransportClosed()
      else if (evt.local) this.abort(evt.error)
      else this.onRemoteReset()
    })
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    this.#flush()
    await this.#inner.close(options)
  }

  /**
   * Sealed at once (the keystream must follow the byte order), written at the end of this turn of the event
   * loop: a connection's small frames — yamux headers and window updates, multistream-select, identify,
   * gossip, a sync session's frames — come several at a time, and each socket write on a LAN costs both
   * kernels a packet: ~160 µs of CPU apiece in a lab (veth), two thirds of them mergeable (docs/mesh.md).
   */
  sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean } {
    const sealed = this.#seal(data.subarray())
    if (sealed.byteLength >= COALESCE_BYTES) {
      this.#flush()
      this.#write(sealed)
    } else {
      this.#pending.push(sealed)
      this.#pendingBytes += sealed.byteLength
      if (this.#pendingBytes >= COALESCE_BYTES) this.#flush()
      else if (!this.#flushQueued) {
        this.#flushQueued = true
        setImmediate(this.#flushLater)
      }
    }
    return { sentBytes: data.byteLength, canSendMore: !this.#innerFull }
  }

  readonly #flushLater = (): void => {
    this.#flushQueued = false
    try {
      this.#flush()
    } catch (err) {
      // The socket closed under the frames: nobody awaits this write, so the connection ends here.
      this.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  #flush(): void {
    if (this.#pendingBytes === 0) return
    const chunks = this.#pending
    const bytes = this.#pendingBytes
    this.#pending = []
    this.#pendingBytes = 0
    this.#write(chunks.length === 1 ? (chunks[0] as Uint8Array) : Buffer.concat(chunks, bytes))
  }

  #write(bytes: Uint8Array): void {
    if (!this.#inner.send(bytes)) this.#innerFull = true
  }

  sendReset(err: Error): void {
    this.#pending = []
    this.#pendingBytes = 0
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
