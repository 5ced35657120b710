// The asking side of an accepted stream, as the control API relays it: items (log entries, container
// statuses) as an async iterable, and an exec as the API server's ExecSession — so the API's own relay,
// its backpressure and its kill-on-leave serve a program on another node exactly as a local one.
import { Writable } from 'node:stream'
import { execOutput } from '../api/exec-output.ts'
import { ErrorFrame } from '../api/schemas.ts'
import type { ExecSession } from '../api/server.ts'
import { Km1sError } from '../common/errors.ts'
import { endError, type FrameChannel } from './channel.ts'
import { jsonOf, RemoteFrame } from './protocol.ts'

/** A log follower's queue between the stream and the API: past it the stream is paused. */
export const QUEUE_ITEMS = 256

export interface Schema<T> {
  safeParse(x: unknown): { success: true; data: T } | { success: false }
}

/**
 * The items of an accepted stream until its `end` frame, as an async iterable that holds at most
 * QUEUE_ITEMS (then the stream is paused); `signal` (the API client leaving) resets the stream.
 */
export function itemsOf<T>(ch: FrameChannel, schema: Schema<T>, signal: AbortSignal): AsyncIterable<T> {
  const queue: T[] = []
  let done = false
  let failure: Error | undefined
  let wake: (() => void) | undefined
  const notify = () => {
    const w = wake
    wake = undefined
    w?.()
  }
  const stop = (err?: Error) => {
    if (done) return
    done = true
    failure = err
    notify()
  }
  ch.onFrame((f) => {
    if (done) return
    if (f.type === RemoteFrame.item) {
      const item = schema.safeParse(jsonOf(f.payload))
      if (!item.success) {
        ch.abort('bad item')
        return stop(
          new Km1sError(
            'ERR_BAD_FRAME',
            'The other node sent an item this km1s cannot read; run the same km1s version on both.',
          ),
        )
      }
      queue.push(item.data)
      if (queue.length >= QUEUE_ITEMS) ch.pause()
      notify()
    } else if (f.type === RemoteFrame.end) {
      ch.close()
      stop()
    } else if (f.type === RemoteFrame.error) {
      const e = ErrorFrame.safeParse(jsonOf(f.payload))
      ch.close()
      stop(
        e.success
          ? new Km1sError(e.data.code, e.data.message)
          : new Km1sError('ERR_BAD_FRAME', 'The other node sent an unreadable error.'),
      )
    } else {
      ch.abort('bad frame')
      stop(new Km1sError('ERR_BAD_FRAME', `The other node sent a frame of type ${f.type}.`))
    }
  })
  ch.onEnd((end) => stop(endError(end, 'end of the items')))
  const onAbort = () => {
    ch.abort('the reader left')
    stop()
  }
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  return {
    async *[Symbol.asyncIterator]() {
      try {
        for (;;) {
          const item = queue.shift()
          if (item !== undefined) {
            if (queue.length < QUEUE_ITEMS / 2 && !done) ch.resume()
            yield item
            continue
          }
          if (done) {
            if (failure && !signal.aborted) throw failure
            return
          }
          await new Promise<void>((r) => {
            wake = r
          })
        }
      } finally {
        signal.removeEventListener('abort', onAbort)
        if (!done) ch.abort('the reader left')
      }
    },
  }
}

/** The asking side of an exec: what the API server relays to its client, fed by the stream's frames. */
export function execSession(ch: FrameChannel, node: string, tty: boolean): ExecSession {
  const out = execOutput({
    who: `Node ${node}`,
    pause: () => ch.pause(),
    resume: () => {
      if (!ch.ended) ch.resume()
    },
    close: (err) => (err ? ch.abort('exec ended') : ch.close()),
  })
  ch.onFrame((f) => out.frame(f.type, f.payload))
  ch.onEnd((e) =>
    out.end(
      e.kind === 'garbage'
        ? e.error
        : new Km1sError(
            'ERR_EXEC_LOST',
            `The stream to node ${node} ended before the command's exit status arrived; check 'km1s nodes'.`,
          ),
    ),
  )
  const stdin = new Writable({
    // The callback waits for the stream's buffer: the API server stops reading its client meanwhile.
    write(chunk: Buffer, _enc, cb) {
      if (out.settled || ch.ended || ch.send(RemoteFrame.stdin, chunk)) return cb()
      ch.drained().then(
        () => cb(),
        () => cb(),
      )
    },
    final(cb) {
      if (out.settled || ch.ended) return cb()
      ch.send(RemoteFrame.stdinEof)
      cb()
    },
  })
  return {
    stdin,
    stdout: out.stdout,
    stderr: tty ? null : out.stderr,
    resize: (cols, rows) => {
      if (!out.settled) ch.sendJson(RemoteFrame.resize, { cols, rows })
    },
    // The API client left, or sent a bad frame: reset the stream, the other node kills the program.
    kill: () => out.end(new Km1sError('ERR_EXEC_LOST', 'The exec was ended here.')),
    exited: out.exited,
  }
}
