// Errors that reach a user carry a stable `code` and a one-sentence message that says what to do.
// Match them by `code` (or `name`), not `instanceof`: they cross the control API as JSON.

export class Km1sError extends Error {
  override readonly name = 'Km1sError'
  readonly code: string

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
  }
}

export function isKm1sError(err: unknown): err is Km1sError {
  return (
    err instanceof Error && typeof (err as { code?: unknown }).code === 'string' && err.name === 'Km1sError'
  )
}

/** The message of any thrown value, for logs. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
