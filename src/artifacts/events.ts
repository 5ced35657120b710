// A long operation (push, pull) as a stream of progress events for the control API: the latest progress at
// most every `everyMs`, then one `done` with the result or one `error` with the Km1sError's code. Errors go
// in the stream because once the answer's headers are out an HTTP status can no longer carry them.
import { errorMessage, isKm1sError } from '../common/errors.ts'
import type { Progress } from './artifacts.ts'

export type OperationEvent<R> =
  | ({ t: 'progress' } & Progress)
  | ({ t: 'done'; result: R } & Progress)
  | ({ t: 'error'; code: string; message: string } & Progress)

export async function* operationEvents<R>(
  run: (onProgress: (p: Progress) => void) => Promise<R>,
  opts: { everyMs?: number } = {},
): AsyncGenerator<OperationEvent<R>> {
  let last: Progress = { bytes: 0, total: 0, peers: 0, badBlocks: 0 }
  let changed = false
  let wake: (() => void) | undefined
  let outcome: { ok: true; result: R } | { ok: false; err: unknown } | undefined
  run((p) => {
    last = { bytes: p.bytes, total: p.total, peers: p.peers, badBlocks: p.badBlocks }
    changed = true
  }).then(
    (result) => {
      outcome = { ok: true, result }
      wake?.()
    },
    (err) => {
      outcome = { ok: false, err }
      wake?.()
    },
  )
  const every = opts.everyMs ?? 200
  while (!outcome) {
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, every)
      wake = () => {
        clearTimeout(t)
        resolve()
      }
    })
    wake = undefined
    if (changed && !outcome) {
      changed = false
      yield { t: 'progress', ...last }
    }
  }
  if (outcome.ok) yield { t: 'done', result: outcome.result, ...last }
  else {
    const err = outcome.err
    yield isKm1sError(err)
      ? { t: 'error', code: err.code, message: err.message, ...last }
      : { t: 'error', code: 'ERR_INTERNAL', message: `The agent failed: ${errorMessage(err)}`, ...last }
  }
}
