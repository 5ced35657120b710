// The receiving end of an exec's frames, one piece for both places that read them: the API client (frames
// from the local agent over its socket) and remote/ (frames from the node that runs the container, over a
// libp2p stream). It routes stdout and stderr with backpressure and ends the exec once, on its exit status
// or an error; each caller keeps its own transport: how to pause, resume and close it.
import { PassThrough } from 'node:stream'
import { Km1sError } from '../common/errors.ts'
import { ErrorFrame, ExitFrame, Frame } from './schemas.ts'

export interface ExecExit {
  code: number | null
  signal: string | null
}

export interface ExecOutput {
  readonly stdout: PassThrough
  readonly stderr: PassThrough
  readonly exited: Promise<ExecExit>
  readonly settled: boolean
  /** One frame from the program's side: output, its exit status or an error; any other type is bad. */
  frame(type: number, payload: Uint8Array): void
  /** Ends the exec (once): with an error, which `exited` rejects with, or with the exit status. */
  end(err?: Error, exit?: ExecExit): void
  /** Ends the exec because the other side sent `what`, which this side cannot read. */
  bad(what: string): void
}

export interface ExecTransport {
  /** Who sends the frames, for errors: "The agent", "Node pi-b". */
  who: string
  pause(): void
  resume(): void
  /** Called once as the exec ends, before `exited` settles; `err` is set when it ended by an error. */
  close(err: Error | undefined): void
}

function json(payload: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(payload).toString('utf8'))
  } catch {
    return undefined
  }
}

export function execOutput(t: ExecTransport): ExecOutput {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const full = new Set<PassThrough>()
  const { promise: exited, resolve, reject } = Promise.withResolvers<ExecExit>()
  exited.catch(() => {})
  let settled = false
  const end = (err?: Error, exit?: ExecExit) => {
    if (settled) return
    settled = true
    stdout.end()
    stderr.end()
    t.close(err)
    if (err) reject(err)
    else resolve(exit as ExecExit)
  }
  const bad = (what: string) =>
    end(new Km1sError('ERR_BAD_FRAME', `${t.who} sent ${what}; run the same km1s version on both.`))
  return {
    stdout,
    stderr,
    exited,
    get settled() {
      return settled
    },
    end,
    bad,
    frame(type, payload) {
      if (settled) return
      if (type === Frame.stdout || type === Frame.stderr) {
        const out = type === Frame.stdout ? stdout : stderr
        if (!out.write(payload) && !full.has(out)) {
          full.add(out)
          t.pause()
          out.once('drain', () => {
            full.delete(out)
            if (full.size === 0) t.resume()
          })
        }
      } else if (type === Frame.exit) {
        const exit = ExitFrame.safeParse(json(payload))
        if (exit.success) end(undefined, exit.data)
        else bad('an exit frame that is not { code, signal }')
      } else if (type === Frame.error) {
        const e = ErrorFrame.safeParse(json(payload))
        if (e.success) end(new Km1sError(e.data.code, e.data.message))
        else bad('an unreadable error frame')
      } else bad(`a frame of type ${type}`)
    },
  }
}
