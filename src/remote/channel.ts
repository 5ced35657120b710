// Frames over one libp2p stream, with backpressure both ways: `send` says when the stream's buffer is full
// (wait for `drained`), `pause` stops reading (yamux then stops granting window, so the sender's `send`
// says full in turn). Input ends once — the remote's end of file, a reset, our own abort or bytes that
// are no frame — and every end is final: this protocol has no half-closed state (end of input is a frame).
import type { Stream } from '@libp2p/interface'
import { type DecodedFrame, encodeChunked, encodeFrame, FrameDecoder } from '../api/schemas.ts'
import { errorMessage, Km1sError } from '../common/errors.ts'

/**
 * Yamux lets a stream's receive window grow to 16 MiB on a fast link, and a paused reader must hold all
 * it granted: measured, a follower nobody read held 16 MiB. These streams keep yamux's first window,
 * 256 KiB — plenty for a LAN's round trip — set on the yamux stream itself (libp2p has no option for it).
 */
export const WINDOW_BYTES = 256 * 1024
/** How much a paused stream may hold before libp2p resets it: the window, with room to spare. */
export const READ_BUFFER_BYTES = 4 * WINDOW_BYTES
/** How long a closed (half-closed) stream waits for the other side's close before it is reset. */
const CLOSE_GRACE_MS = 5_000

export type InputEnd =
  | { kind: 'eof' } // the other side closed its writable end
  | { kind: 'reset'; error: Error } // the other side or the connection went away, or we aborted
  | { kind: 'garbage'; error: Km1sError } // bytes that are not a frame (an oversized length included)

export class FrameChannel {
  readonly stream: Stream
  readonly #decoder = new FrameDecoder()
  #queue: DecodedFrame[] = []
  #onFrame: ((f: DecodedFrame) => void) | undefined
  #ended: InputEnd | undefined
  #endFired = false
  readonly #onEnd: Array<(end: InputEnd) => void> = []
  #closing = false

  constructor(stream: Stream) {
    this.stream = stream
    stream.maxReadBufferLength = READ_BUFFER_BYTES
    const muxed = stream as unknown as { maxStreamWindowSize?: number }
    if (typeof muxed.maxStreamWindowSize === 'number') muxed.maxStreamWindowSize = WINDOW_BYTES
    stream.addEventListener('message', (evt) => {
      if (this.#ended) return
      const data = evt.data
      let frames: DecodedFrame[]
      try {
        frames = this.#decoder.push(Buffer.from(data.subarray()))
      } catch (err) {
        const error =
          err instanceof Km1sError ? err : new Km1sError('ERR_BAD_FRAME', `Bad frame: ${errorMessage(err)}.`)
        return this.#end({ kind: 'garbage', error })
      }
      for (const f of frames) {
        if (this.#ended) return
        if (this.#onFrame && this.#queue.length === 0) this.#onFrame(f)
        else this.#queue.push(f)
      }
    })
    // 'end' comes after the last message was delivered; 'close' also when nothing was left to deliver.
    stream.addEventListener('end', () => {
      if (stream.status === 'open' || stream.status === 'closing' || stream.status === 'closed')
        this.#end({ kind: 'eof' })
    })
    stream.addEventListener('close', (evt) => {
      this.#end(evt.error ? { kind: 'reset', error: evt.error } : { kind: 'eof' })
    })
  }

  /** Delivers frames (those that arrived before, first) until input ends. */
  onFrame(fn: (f: DecodedFrame) => void): void {
    this.#onFrame = fn
    while (this.#queue.length > 0 && this.#onFrame === fn) fn(this.#queue.shift() as DecodedFrame)
    this.#fireEnd()
  }

  /** Runs once when input ended and every frame before the end was delivered (at once if so already). */
  onEnd(fn: (end: InputEnd) => void): void {
    if (this.#endFired && this.#ended) fn(this.#ended)
    else this.#onEnd.push(fn)
  }

  /** Set once input ended and every frame that came before was delivered. */
  get ended(): InputEnd | undefined {
    return this.#endFired ? this.#ended : undefined
  }

  /** The next frame; rejects when input ends first or after `timeoutMs`. Only before `onFrame`. */
  next(timeoutMs: number, what: string): Promise<DecodedFrame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#onFrame = undefined
        reject(new Km1sError('ERR_REMOTE_TIMEOUT', `No ${what} arrived within ${timeoutMs / 1000} s.`))
      }, timeoutMs)
      timer.unref()
      this.onEnd((end) => {
        clearTimeout(timer)
        reject(endError(end, what))
      })
      this.onFrame((f) => {
        clearTimeout(timer)
        this.#onFrame = undefined
        resolve(f)
      })
    })
  }

  /** Writes a frame (a large payload as several); false when the stream's buffer is full. */
  send(type: number, payload: Uint8Array | string = ''): boolean {
    if (this.stream.writeStatus !== 'writable') return false
    const frames =
      typeof payload !== 'string' && payload.length > 0
        ? encodeChunked(type, payload)
        : [encodeFrame(type, payload)]
    try {
      for (const frame of frames) this.stream.send(frame)
    } catch {
      return false
    }
    return !this.stream.writableNeedsDrain
  }

  sendJson(type: number, value: unknown): boolean {
    return this.send(type, JSON.stringify(value))
  }

  /** Resolves when `send` may be called again; rejects when the stream closes first. */
  drained(): Promise<void> {
    if (this.stream.writeStatus !== 'writable') return Promise.reject(new Error('stream closed'))
    return this.stream.onDrain()
  }

  pause(): void {
    if (this.stream.readStatus === 'readable') this.stream.pause()
  }

  resume(): void {
    if (this.stream.readStatus === 'paused') this.stream.resume()
  }

  /** Ends our side after what was sent; resets the stream if the other side does not close too soon. */
  close(): void {
    if (this.#closing) return
    this.#closing = true
    const signal = AbortSignal.timeout(CLOSE_GRACE_MS)
    this.stream.close({ signal }).then(
      () => {
        if (this.stream.status === 'open' || this.stream.status === 'closing') {
          const t = setTimeout(() => this.abort('the other side did not close'), CLOSE_GRACE_MS)
          t.unref()
          this.stream.addEventListener('close', () => clearTimeout(t), { once: true })
        }
      },
      () => this.abort('closing timed out'),
    )
  }

  /** Resets the stream at once, both ways, discarding what is buffered. */
  abort(why: string): void {
    this.#queue = []
    this.#end({ kind: 'reset', error: new Error(why) })
    this.stream.abort(new Error(why))
  }

  /** Input is over: frames already queued are still delivered to the handler before the end fires. */
  #end(end: InputEnd): void {
    if (this.#ended) return
    this.#ended = end
    this.#fireEnd()
  }

  #fireEnd(): void {
    if (!this.#ended || this.#endFired || this.#queue.length > 0) return
    this.#endFired = true
    for (const fn of this.#onEnd.splice(0)) fn(this.#ended)
  }
}

/** What an input end means to a side that still waited for `what`. */
export function endError(end: InputEnd, what: string): Error {
  if (end.kind === 'garbage') return end.error
  return new Km1sError(
    'ERR_REMOTE_LOST',
    end.kind === 'eof'
      ? `The other node closed the stream before the ${what} arrived.`
      : `The stream ended before the ${what} arrived: ${errorMessage(end.error)}.`,
  )
}
