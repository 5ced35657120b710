// The asking side of an accepted stream, as the control API relays it: items (log entries, container
// statuses) as an async iterable, and an exec as the API server's ExecSession — so the API's own relay,
// its backpressure and its kill-on-leave serve a program on another node exactly as a local one.
import { PassThrough, Writable } from 'node:stream'
import { ErrorFrame, ExitFrame } from '../api/schemas.ts'
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
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const full = new Set<PassThrough>()
  let settled = false
  let resolveExit: (exit: { code: number | null; signal: string | null }) => void = () => {}
  let rejectExit: (err: Error) => void = () => {}
  const exited = new Promise<{ code: number | null; signal: string | null }>((res, rej) => {
    resolveExit = res
    rejectExit = rej
  })
  exited.catch(() => {})
  const end = (err?: Error, exit?: { code: number | null; signal: string | null }) => {
    if (settled) return
    settled = true
    stdout.end()
    stderr.end()
    if (err) {
      ch.abort('exec ended')
      rejectExit(err)
    } else {
      ch.close()
      resolveExit(exit as { code: number | null; signal: string | null })
    }
  }
  const bad = (what: string) =>
    end(new Km1sError('ERR_BAD_FRAME', `Node ${node} sent ${what}; run the same km1s version on both.`))
  ch.onFrame((f) => {
    if (settled) return
    if (f.type === RemoteFrame.stdout || f.type === RemoteFrame.stderr) {
      const out = f.type === RemoteFrame.stdout ? stdout : stderr
      if (!out.write(f.payload) && !full.has(out)) {
        full.add(out)
        ch.pause()
        out.once('drain', () => {
          full.delete(out)
          if (full.size === 0 && !ch.ended) ch.resume()
        })
      }
    } else if (f.type === RemoteFrame.exit) {
      const exit = ExitFrame.safeParse(jsonOf(f.payload))
      if (exit.success) end(undefined, exit.data)
      else bad('an exit frame that is not { code, signal }')
    } else if (f.type === RemoteFrame.error) {
      const e = ErrorFrame.safeParse(jsonOf(f.payload))
      if (e.success) end(new Km1sError(e.data.code, e.data.message))
      else bad('an unreadable error frame')
    } else bad(`a frame of type ${f.type}`)
  })
  ch.onEnd((e) =>
    end(
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
      if (settled || ch.ended || ch.send(RemoteFrame.stdin, chunk)) return cb()
      ch.drained().then(
        () => cb(),
        () => cb(),
      )
    },
    final(cb) {
      if (settled || ch.ended) return cb()
      ch.send(RemoteFrame.stdinEof)
      cb()
    },
  })
  return {
    stdin,
    stdout,
    stderr: tty ? null : stderr,
    resize: (cols, rows) => {
      if (!settled) ch.sendJson(RemoteFrame.resize, { cols, rows })
    },
    // The API client left, or sent a bad frame: reset the stream, the other node kills the program.
    kill: () => {
      if (!settled) end(new Km1sError('ERR_EXEC_LOST', 'The exec was ended here.'))
    },
    exited,
  }
}
