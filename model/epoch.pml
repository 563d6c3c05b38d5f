/*
 * epoch.pml - Promela model of idc's epoch protocol (DESIGN.md §4-§6).
 *
 * One group, two members (M0, M1; M1 joins at a time of its choosing), one or
 * two coordinators, one guarded resource, a store that is a linearizable
 * register (every store operation is one atomic step), a lossy, reordering,
 * duplicating network, and abstract time (global ticks; every clock is a
 * countdown). See model/README.md for the mapping to the Go code.
 *
 * Selected with -D:
 *   MODE=1 lease | MODE=2 fence | MODE=3 both                 (default 3)
 *   NC=1|2       coordinators racing (default 1; 2 with BROKEN_NO_CAS)
 *   FAULTS=n     budget of big faults (store's early lease revocation,
 *                fault report, quiesce timeout, graceful leave)  (default 2)
 *   LIVE         liveness run: faults stop once the budget is spent, timely
 *                renewals once they stop, urgent steps first; check ltl L1
 *   CHECK_STALE  also assert NS (no stale I/O: a resource applies no request
 *                of an epoch older than the last connected one)
 *   BROKEN_FENCE_ONLY_DEPARTED  coordinator waits for fence acknowledgements
 *                only when a member departed (the Go code before finding F1;
 *                now it fences every change)
 *   BROKEN_RECEIVER_NO_EPOCH_CHECK  (with CHANNELS) a member delivers
 *                every channel message that arrives, whatever its epoch and
 *                the member's phase (no "connected in epoch e" check)
 *   BROKEN_CONNECT_EARLY, BROKEN_NO_CAS, BROKEN_TRUST_STORE_EXPIRY,
 *   BROKEN_VALIDITY_FROM_RECEIPT, BROKEN_GUARD_AT_ADMISSION: see README.
 *
 *   BATCH        batched quiesce acks (README "Batched acknowledgements"):
 *                three members; M0 and M1 are memberships of one process
 *                (host H0) that share one watch of the epoch record and one
 *                ack writer, which writes the acks handed to it in batches
 *                (one store transaction, each ack under its own member's
 *                lease; a batch with a lease gone fails whole); M2 is a
 *                solo member (its own watch, its acks written one by one,
 *                as without BATCH). No fault reports and no channels.
 *   BROKEN_BATCH_ALL  (with BATCH) the writer writes, with an ack handed
 *                to it, the ack of every membership of the host, quiesced
 *                or not
 *   BROKEN_BATCH_LATEST_EPOCH  (with BATCH) the writer writes each ack for
 *                the epoch the host saw last, not the one the membership
 *                quiesced for: NOT caught, not in model/check (README,
 *                finding B1)
 */

#ifndef MODE
#define MODE 3
#endif
#define USES_LEASE ((MODE & 1) != 0)
#define USES_FENCE ((MODE & 2) != 0)

#ifndef NC
#ifdef BROKEN_NO_CAS
#define NC 2
#else
#define NC 1
#endif
#endif

#ifdef BATCH
#define NM 3            /* members M0, M1 (host H0), M2 (solo) */
#define HOSTED(i) ((i) < 2)     /* a membership of host H0 */
#define JOINER(i) ((i) == 2)    /* M0 and M1 are there from the start */
#define PASSIVE(i) ((i) == 2)   /* M2 only joins, watches and acks: no ops,
                                   no leave, timely renewals, no early
                                   revocation, so it does no I/O and counts
                                   as harmless once departed (keeps the
                                   state space small) */
#if defined(CHANNELS) || defined(LIVE)
#error "BATCH is a safety model without channels"
#endif
#else
#define NM 2            /* members M0, M1 */
#define JOINER(i) ((i) == 1)    /* M0 is there from the start */
#define PASSIVE(i) 0
#endif
#define NR 1            /* guarded resources */
#ifndef MAXEP
#define MAXEP 4         /* epoch numbers 1..MAXEP: enough for formation,
                           one join and two departures (2 members) */
#endif
#ifndef FAULTS
#define FAULTS 2
#endif

/* Abstract time, in ticks of real time. A member may act for V ticks after
 * SENDING the renewal the store answered (TTL·(1−ρ) − margin by its clock,
 * at most TTL·(1−ρ²) − margin·(1+ρ) real); the coordinator waits W ticks
 * after it SAW a lease gone (TTL·(1+ρ) + margin by its clock, at least
 * TTL·(1−ρ²) + margin·(1−ρ) real). The margins make V < W; the model takes
 * the tightest case the argument allows, V = W (no margin at all), so a
 * correct run shows the protocol safe without relying on the margin. */
#ifndef V
#define V 2
#endif
#ifndef W
#define W 2
#endif

#define BIT(e)    (1 << (e))
#define HAS(s, e) ((((s) >> (e)) & 1) == 1)
#define BELOW(n)  (BIT(n) - 1)          /* bits of epochs < n */

/* member phases (core/member.Phase) */
#define JOINING   0
#define CONNECTED 1
#define QUIESCING 2
#define FENCED    3
#define LEFT      4
#define STOPPED(i) (mph[i] >= FENCED)

mtype = { Connected, Quiescing };

/* Property names, so that pan's "assertion violated (G3 && ...)" says which. */
byte G1 = 1;   /* one authority */
byte G2 = 1;   /* no stale delivery */
byte G3 = 1;   /* quiesce barrier */
byte G4 = 1;   /* departed domains are harmless */
byte G5 = 1;   /* fencing holds */
byte G6 = 1;   /* self-fencing */
byte NS = 1;   /* no stale I/O at a resource (end to end, CHECK_STALE) */

/* ---- the store (etcd): one linearizable register of all keys ---------- */
/* groups/<g>/epoch: EpochRecord, written only by CAS on its revision */
byte enr;            /* Number (0: no record) */
bool econn;           /* State == Connected */
byte emem;            /* Members (bit set of member indices) */
byte eprev;           /* Prev */
byte eprevnum;        /* PrevNumber */
byte eexcl;           /* Excluded */
/* groups/<g>/members/<id> (under the member's lease) and the leases */
byte live;            /* member records present */
bool slease[NM];      /* membership lease exists in the store */
/* groups/<g>/acks/<epoch>/<id> (member's lease): bit e = ack for epoch e */
byte ackset[NM];
/* groups/<g>/faults/<epoch>/<reporter>/<suspect>: frep[s] = epoch of the
 * report by the other member against s (reporter's lease); 0: none */
byte frep[NM];
/* groups/<g>/left/<id> */
byte leftm;
/* groups/<g>/fenceacks/<epoch>/<name>: the guard writes the ack in the
 * same step as it applies the fence, so the highest fence acknowledged is
 * gfence[g] below; an ack for a later epoch than the one asked about counts
 * too (it refuses every older token), which only makes connecting easier */

/* ---- members (the parts other processes' assertions read) ------------- */
byte mph[NM];         /* phase */
byte mcur[NM];        /* connected epoch, or the last one */
byte mop[NM];         /* epoch of the operation in progress (0: none) */
byte mvalid[NM];      /* ticks of lease validity left by its own clock */
byte rans[NM];        /* answered renewal in flight back to the member:
                         the validity it carries (ticks left), 0 none */
bool joined1;         /* M1 has joined */

#ifdef BATCH
/* ---- host H0: the process of memberships M0 and M1 (BATCH) ------------ */
/* its watch of groups/<g>/epoch, shared by M0 and M1: the record it last
 * received (decoded once); each membership observes this copy when it likes,
 * not the store */
byte hnr;             /* Number */
bool hconn;           /* State == Connected */
byte hmem;            /* Members */
byte hprev;           /* Prev */
byte hexcl;           /* Excluded */
/* its ack writer: the acks handed to it and not yet written; hand[d] is a
 * set of epochs (bit e = M<d> has quiesced for epoch e and handed its ack) */
byte hand[2];
#endif

/* the record a member observes: its host's copy (BATCH, M0 and M1) or the
 * store's (a watch of its own) */
#ifdef BATCH
#define RNR(i)   (HOSTED(i) -> hnr : enr)
#define RCONN(i) (HOSTED(i) -> hconn : econn)
#define RMEM(i)  (HOSTED(i) -> hmem : emem)
#define RPREV(i) (HOSTED(i) -> hprev : eprev)
#define REXCL(i) (HOSTED(i) -> hexcl : eexcl)
#else
#define RNR(i)   enr
#define RCONN(i) econn
#define RMEM(i)  emem
#define RPREV(i) eprev
#define REXCL(i) eexcl
#endif

/* ---- network ----------------------------------------------------------- */
byte nreq;            /* requests to the resource in flight: set of token
                         epochs; delivery may keep a copy (duplicate), any
                         element may go first (reorder) or vanish (loss) */
byte pmsg[NM];        /* channel messages to member i: set of epochs */

/* ---- resource guards ---------------------------------------------------- */
byte gfence[NR];      /* lowest admitted epoch */
byte gq[NR];          /* admitted, not yet applied: its token epoch (0: none) */

/* ---- coordinators' own clocks ----------------------------------------- */
byte cw[NC * NM];     /* lease wait for member d at coordinator c:
                         0 not seen gone; k > 1 waiting k−1 more ticks; 1 over */

byte budget = FAULTS;

/* ---- ghosts ------------------------------------------------------------ */
#ifdef CHANNELS
byte connmem[MAXEP + 1];    /* members of each connected epoch */
#endif
/* the last connected epoch: the record's, or its PrevNumber if quiescing */
#define LASTCONN (econn -> enr : eprevnum)

#ifdef BROKEN_VALIDITY_FROM_RECEIPT
#define ANSWER_AGES 0
#ifndef ANSWER_DELAY
#define ANSWER_DELAY
#endif
#else
#define ANSWER_AGES 1
#endif

/* a member that may still act, for G4's "proven stopped": in fence mode
 * members are not trusted to stop (a departed member keeps sending) */
#define CANACT(d) (!PASSIVE(d) && (USES_FENCE || (!STOPPED(d) && (mvalid[d] > 0 || (ANSWER_AGES && rans[d] > 0)))))
#define FENCED_ALL(n) (gfence[0] >= (n))

/* a big fault may happen while the budget lasts; then faults stop */
#define FAULT (budget > 0)
#define SPEND budget--

/* the store: the lease of membership d is gone (expiry or revocation);
 * every key under it goes with it */
inline expire(d) {
	printf("EV store: lease of M%d gone\n", d);
	slease[d] = 0;
	live = live & ~BIT(d);
	ackset[d] = 0;
#if NM == 2
	frep[1 - d] = 0
#else
	skip
#endif
}

/* ======================================================================== */
/* Coordinator: core/coordinator.Machine, level-triggered                   */
/* ======================================================================== */

inline markgone(c, d) {
	if
	:: USES_LEASE && cw[c * NM + d] == 0 ->
#ifdef BROKEN_TRUST_STORE_EXPIRY
		cw[c * NM + d] = 1          /* trusts the store: stopped at once */
#else
		cw[c * NM + d] = W + 1      /* wait W ticks from own observation */
#endif
	:: else -> skip
	fi
}

/* WriteEpoch{Record, ExpectRevision: sr}: compare-and-swap */
inline caswrite(n, conn, mem, prev, prevnum, excl, cleanleft) {
#ifdef BROKEN_NO_CAS
	ok = 1;
#else
	/* the key's mod revision: every successful write changes (Number,
	 * State) (G1 asserts it), so the pair identifies the revision */
	ok = (enr == sn && econn == sc);
#endif
	if
	:: ok ->
		/* G1: numbers rise strictly, each epoch decided once */
		assert(G1 && (n > enr || (n == enr && !econn && conn && mem == emem)));
		if
		:: conn && enr == n ->
			/* connecting the quiescing epoch n */
			d = 0;
			do
			:: d < NM ->
				if
				:: HAS(mem & eprev, d) ->
					/* G3: no survivor has an op of an earlier epoch */
					assert(G3 && (mop[d] == 0 || mop[d] >= n))
				:: HAS(eprev & ~mem, d) ->
					/* G4: departed: proven stopped or fenced everywhere */
					assert(G4 && (!CANACT(d) || FENCED_ALL(n)))
				:: else -> skip
				fi;
				d++
			:: else -> break
			od
		:: else -> skip
		fi;
		if
		:: conn ->
#ifdef CHANNELS
			connmem[n] = mem;
#endif
			/* Cleanup{Before: n, Left}: same transaction */
			ackset[0] = ackset[0] & ~BELOW(n);
			ackset[1] = ackset[1] & ~BELOW(n);
#if NM == 2
			if :: frep[0] < n -> frep[0] = 0 :: else -> skip fi;
			if :: frep[1] < n -> frep[1] = 0 :: else -> skip fi;
#else
			ackset[2] = ackset[2] & ~BELOW(n);
#endif
			leftm = leftm & ~cleanleft
		:: else -> skip
		fi;
		printf("EV coord %d writes epoch %d %e members=%d prev=%d excluded=%d\n", c, n, (conn -> Connected : Quiescing), mem, prev, excl);
		enr = n; econn = conn; emem = mem; eprev = prev;
		eprevnum = prevnum; eexcl = excl
	:: else -> printf("EV coord %d write of epoch %d failed (CAS)\n", c, n)  /* WriteFailed */
	fi
}

inline snapshot() {
		/* Update(view): a consistent snapshot of the group's keys */
		sn = enr; sc = econn; sm = emem; sp = eprev; spn = eprevnum;
		sx = eexcl; sl = live; slf = leftm;
		sa = 0;
		if :: HAS(ackset[0], enr) -> sa = sa | 1 :: else -> skip fi;
		if :: HAS(ackset[1], enr) -> sa = sa | 2 :: else -> skip fi;
#if NM > 2
		if :: HAS(ackset[2], enr) -> sa = sa | 4 :: else -> skip fi;
#endif
		sf = (gfence[0] >= enr);
		/* valid fault reports and the DropSuspect policy: reporter live
		 * and a member, suspect a member, report from the last connected
		 * epoch; mutual reports: the smaller ID (M0) stays */
		spol = 0;
#if NM == 2
		d = 0;
		do
		:: d < NM ->
			if
			:: frep[d] != 0 && frep[d] >= (econn -> enr : eprevnum) &&
			   HAS(emem, d) && HAS(emem, 1 - d) && HAS(live, 1 - d) ->
				spol = spol | BIT(d)
			:: else -> skip
			fi;
			d++
		:: else -> break
		od;
		if :: spol == 3 -> spol = 2 :: else -> skip fi
#endif
}

inline decide() {
		/* step(): decide on the view, at the current local time */
		if
		:: sn == 0 ->
			if
			:: sl != 0 -> caswrite(1, 1, sl, 0, 0, 0, 0)   /* epoch 1, connected */
			:: else -> skip
			fi
		:: else ->
			dep = (sc -> 0 : sp & ~sm);           /* Departed() */
			surv = (sc -> 0 : sp & sm);           /* Survivors() */
			d = 0;
			do
			:: d < NM ->
				if
				:: HAS(dep | sx, d) && !HAS(sl, d) -> markgone(c, d)
				:: else -> skip
				fi;
				d++
			:: else -> break
			od;
			drop = sx | dep | spol;
			if :: !sc && qto == sn -> drop = drop | (surv & ~sa) :: else -> skip fi;
			des = sl & ~drop;
			if
			:: des != sm ->
				/* change(): epoch n+1, quiescing */
				if
				:: sn < MAXEP ->
					if
					:: sc -> caswrite(sn + 1, 0, des, sm, sn, sl & drop, 0)
					:: else -> caswrite(sn + 1, 0, des, sp, spn, sl & drop, 0)
					fi
				:: else -> skip     /* bound of the model */
				fi
			:: else ->
				if
				:: sc ->
					/* prune() */
					d = 0;
					do
					:: d < NM ->
						if :: !HAS(sx, d) -> cw[c * NM + d] = 0 :: else -> skip fi;
						d++
					:: else -> break
					od
				:: else ->
					/* revokeDeparted(): revoke, and Revoked marks it gone */
					d = 0;
					do
					:: d < NM ->
						if
						:: HAS(dep | sx, d) && HAS(sl, d) && cw[c * NM + d] == 0 ->
							if :: slease[d] -> expire(d) :: else -> skip fi;
							markgone(c, d)
						:: else -> skip
						fi;
						d++
					:: else -> break
					od;
					/* connectable() */
#ifdef BROKEN_CONNECT_EARLY
					ok = 1;
#else
					ok = ((surv & ~sa) == 0);           /* every survivor acked (G3) */
#endif
#ifdef BROKEN_FENCE_ONLY_DEPARTED
					if :: USES_FENCE && dep != 0 && !sf -> ok = 0 :: else -> skip fi;
#else
					if :: USES_FENCE && !sf -> ok = 0 :: else -> skip fi;
#endif
					if
					:: USES_LEASE ->
						d = 0;
						do
						:: d < NM ->
							if
							:: HAS(dep, d) && !HAS(slf, d) && cw[c * NM + d] != 1 -> ok = 0
							:: else -> skip
							fi;
							d++
						:: else -> break
						od
					:: else -> skip
					fi;
					if
					:: ok -> caswrite(sn, 1, sm, 0, 0, sx & sl, dep & slf)
					:: else -> skip
					fi
				fi
			fi
		fi
}

inline reset() {
		snap = 0; sn = 0; sc = 0; sm = 0; sp = 0; spn = 0; sx = 0;
		sl = 0; sa = 0; slf = 0; sf = 0; spol = 0; d = 0; dep = 0; drop = 0;
		des = 0; surv = 0; ok = 0
}

proctype coord(byte c)
{
	/* the view (View) the decision is based on */
	bool snap, sc, sf;
	byte sn, sm, sp, spn, sx, sl, sa, slf, spol;
	/* timing the machine observed itself */
	byte qto;           /* quiescing epoch whose quiesce deadline passed */
	byte d, dep, drop, des, surv;
	bool ok;

end:
	do
#if NC > 1 || defined(SPLIT_VIEW)
	/* Update(view): the view may be stale by the time step() decides */
	:: atomic { !snap -> snapshot(); snap = 1 }
	:: atomic { snap -> decide(); reset() }
#else
	/* one coordinator: its CAS always compares against its own last write,
	 * so a stale view only delays decisions; read and decide atomically */
	:: atomic { snapshot(); decide(); reset() }
#endif
	:: atomic { FAULT && enr > 0 && !econn && qto != enr ->
		/* the quiesce deadline passes before every survivor acked */
		SPEND; qto = enr; printf("EV coord %d: quiesce deadline of epoch %d passed\n", c, enr)
	}
	od
}

/* ======================================================================== */
/* Member: core/member.Machine with its driver                              */
/* ======================================================================== */

inline disconnect() {
	if :: mph[i] == CONNECTED -> mph[i] = QUIESCING :: else -> skip fi
}

inline fence() {
	printf("EV M%d fences itself (cur=%d valid=%d)\n", i, mcur[i], mvalid[i]);
	disconnect();
	mph[i] = FENCED
}

inline maybeack() {
	if
	:: acktgt > acked && (mop[i] == 0 || mop[i] >= acktgt) && !STOPPED(i) ->
		acked = acktgt;
#ifdef BATCH
		if
		:: HOSTED(i) ->
			/* quiesced: hand the ack (its own epoch) to the host's
			 * writer, which writes it later, maybe with others */
			printf("EV M%d quiesced for epoch %d, hands its ack to H0\n", i, acktgt);
			hand[i] = hand[i] | BIT(acktgt)
		:: else ->
#endif
		/* WriteAck, under the member's lease: fails once it is gone */
		printf("EV M%d acks quiesce of epoch %d\n", i, acktgt);
		if :: slease[i] -> ackset[i] = ackset[i] | BIT(acktgt) :: else -> skip fi
#ifdef BATCH
		fi
#endif
	:: else -> skip
	fi
}

inline maybeleave() {
	if
	:: leaving && !STOPPED(i) && mop[i] == 0 ->
		/* Leave action: write the leave marker, then revoke the lease */
		mph[i] = LEFT;
		if
		:: slease[i] -> leftm = leftm | BIT(i); expire(i)
		:: else -> skip
		fi
	:: else -> skip
	fi
}

/* Observe(record): the epoch watch delivers the record now in the store
 * (BATCH, M0 and M1: the record their host's shared watch received last) */
inline observe() {
	seen = RNR(i); seenconn = RCONN(i);
	if
	:: HAS(REXCL(i), i) || (!HAS(RMEM(i), i) && HAS(RPREV(i), i)) ||
	   (!HAS(RMEM(i), i) && RCONN(i) && mcur[i] != 0) ->
		fence()                                   /* ErrEvicted */
	:: else ->
		if
		:: leaving -> skip
		:: !leaving && !RCONN(i) ->
			disconnect();
			printf("EV M%d sees epoch %d quiescing\n", i, RNR(i));
			if
			:: HAS(RMEM(i) & RPREV(i), i) && RNR(i) > acktgt -> acktgt = RNR(i)
			:: else -> skip
			fi;
			maybeack()
		:: !leaving && RCONN(i) && HAS(RMEM(i), i) && RNR(i) > mcur[i] ->
			disconnect();
			mcur[i] = RNR(i); mph[i] = CONNECTED;     /* Connect */
			printf("EV M%d connected in epoch %d\n", i, RNR(i))
		:: else -> skip
		fi
	fi
}

/* a record the member has not observed yet is there (BATCH: in its host's
 * copy for M0 and M1) */
#define WATCH(i)   (RNR(i) > seen || (RNR(i) == seen && RCONN(i) && !seenconn))
#ifdef LIVE
/* liveness runs: spin's weak fairness is per process, so what a member
 * must do is done before what it may do: first the watch, the self-fence
 * and cancelling an op of a disconnected epoch; then renewing; then the rest */
#define MUST(i)    ((!STOPPED(i) && (mvalid[i] == 0 || WATCH(i))) || \
                    (mop[i] != 0 && mph[i] != CONNECTED))
#define RENEW(i)   (!STOPPED(i) && mvalid[i] < V && slease[i])
#define ROPT(i)    !MUST(i) &&
#define OPT(i)     !MUST(i) && !RENEW(i) &&
#define GOPT(g)    enr <= gfence[g] &&
#else
#define ROPT(i)
#define OPT(i)
#define GOPT(g)
#endif

proctype member(byte i)
{
	byte seen, acktgt, acked, e;
	bool seenconn, leaving;

	if
	:: JOINER(i) -> atomic { live = live | BIT(i); slease[i] = 1; mvalid[i] = V;
		joined1 = (joined1 || i == 1) }
	:: else -> skip
	fi;
end:
	do
	/* Tick: the lease may have lapsed by its own clock: self-fence (G6) */
	:: atomic { !STOPPED(i) && mvalid[i] == 0 -> fence() }
	/* the epoch watch */
	:: atomic { !STOPPED(i) && WATCH(i) -> observe() }
#if (MODE & 1)
#ifdef ANSWER_DELAY
	/* renewal (KeepAliveOnce): the store answers iff the lease exists;
	 * the answer travels back, and carries the validity measured from the
	 * moment the renewal was sent (it ages while in flight) */
	:: atomic { !STOPPED(i) && mvalid[i] > 0 && mvalid[i] < V && rans[i] == 0 ->
		if :: slease[i] -> rans[i] = V; printf("EV M%d renewal answered, answer in flight\n", i) :: else -> skip fi }
	/* the answer arrives: Renewed(sentAt) */
	:: atomic { !STOPPED(i) && rans[i] > 0 ->
#ifdef BROKEN_VALIDITY_FROM_RECEIPT
		mvalid[i] = V;                            /* from receipt */
		printf("EV M%d receives renewal answer: valid %d ticks from receipt\n", i, V);
#else
		if :: rans[i] > mvalid[i] -> mvalid[i] = rans[i] :: else -> skip fi;
		printf("EV M%d receives renewal answer: valid %d ticks from send\n", i, mvalid[i]);
#endif
		rans[i] = 0 }
#else
	/* renewal sent, answered and received at once: with validity measured
	 * from the send, an immediate answer is the member's best case (the
	 * most validity, the latest self-fence), so it covers every delay */
	:: atomic { ROPT(i) !STOPPED(i) && mvalid[i] > 0 && mvalid[i] < V ->
		if :: slease[i] -> mvalid[i] = V; printf("EV M%d renewed\n", i) :: else -> skip fi }
#endif
#else
	/* untimed (fence mode: no decision depends on time): the member's
	 * deadline may pass at any moment */
	:: atomic { OPT(i) !STOPPED(i) -> mvalid[i] = 0; printf("EV M%d lease deadline passes\n", i) }
#endif
	/* Begin an operation; it sends a request with the epoch's token */
	:: atomic { OPT(i) !PASSIVE(i) && mph[i] == CONNECTED && mvalid[i] > 0 && mop[i] == 0 ->
		assert(G6 && mvalid[i] > 0);
		if
		:: USES_LEASE -> assert(G4 && LASTCONN <= mcur[i])  /* no I/O of an epoch already superseded */
		:: else -> skip
		fi;
		mop[i] = mcur[i];
		printf("EV M%d begins op, sends request with token %d\n", i, mcur[i]);
		if :: USES_FENCE && mcur[i] >= gfence[0] -> nreq = nreq | BIT(mcur[i]) :: else -> skip fi }
	/* End: the op completes or, once disconnected, is cancelled */
	:: atomic { mop[i] != 0 -> printf("EV M%d op of epoch %d ends\n", i, mop[i]); mop[i] = 0; maybeack(); maybeleave() }
#ifdef CHANNELS
	/* send a channel message to the peer in the connected epoch */
	:: atomic { OPT(i) mph[i] == CONNECTED && mvalid[i] > 0 && !HAS(pmsg[1 - i], mcur[i]) ->
		pmsg[1 - i] = pmsg[1 - i] | BIT(mcur[i]);
		printf("EV M%d sends channel message of epoch %d\n", i, mcur[i]) }
	/* a channel message arrives; a copy may stay behind (duplicate) */
	:: atomic { pmsg[i] != 0 ->
		select (e : 1 .. MAXEP);
		if
		:: HAS(pmsg[i], e) ->
			if
#ifdef BROKEN_RECEIVER_NO_EPOCH_CHECK
			:: true ->                              /* no epoch check: delivers whatever arrives */
#else
			:: mph[i] == CONNECTED && mcur[i] == e ->
#endif
				/* delivered: G2 */
				printf("EV M%d delivers channel message of epoch %d (phase %d, cur %d)\n", i, e, mph[i], mcur[i]);
				assert(G2 && (HAS(connmem[e], i) && mph[i] == CONNECTED && mcur[i] == e))
			:: else -> skip                        /* dropped and counted */
			fi;
			if :: pmsg[i] = pmsg[i] & ~BIT(e) :: skip fi
		:: else -> skip
		fi; e = 0 }
#endif
#if NM == 2
	/* a fault report: lost the peer while connected (reporter's lease) */
	:: atomic { OPT(i) FAULT && mph[i] == CONNECTED && slease[i] && frep[1 - i] < mcur[i] ->
		SPEND; frep[1 - i] = mcur[i]; printf("EV M%d reports losing M%d\n", i, 1 - i) }
#endif
	/* graceful Leave */
	:: atomic { OPT(i) FAULT && !PASSIVE(i) && !STOPPED(i) && !leaving && mph[i] != JOINING ->
		SPEND; leaving = 1; printf("EV M%d leaves\n", i); disconnect(); maybeleave() }
	/* a departed (fenced, left, paused, lapsed) member that keeps sending
	 * with its old token: only a guard stops it (fence modes) */
#ifndef NOZOMBIE
	:: atomic { OPT(i) USES_FENCE && mcur[i] != 0 && mcur[i] >= gfence[0] && !HAS(nreq, mcur[i]) &&
	            (STOPPED(i) || mvalid[i] == 0) ->
		nreq = nreq | BIT(mcur[i]); printf("EV departed M%d sends request with token %d\n", i, mcur[i]) }
#endif
	od
}

/* ======================================================================== */
/* Resource guard (DESIGN §6; not in the Go code yet)                       */
/* ======================================================================== */

proctype guard(byte g)
{
	byte e;
end:
	do
	/* a fence reaches the guard through the store; it applies it and
	 * acknowledges it in the store */
	:: atomic { enr > gfence[g] -> gfence[g] = enr; printf("EV guard applies and acks fence %d\n", enr);
		/* requests of older epochs still in flight can only be refused
		 * from now on: forget them (a state-space reduction) */
		nreq = nreq & ~BELOW(enr) }
	/* a request arrives and is admitted (a copy may stay in flight) */
	:: atomic { GOPT(g) nreq != 0 && gq[g] == 0 ->
		select (e : 1 .. MAXEP);
		if
		:: HAS(nreq, e) ->
			if :: nreq = nreq & ~BIT(e) :: skip fi;
			if
			:: e >= gfence[g] -> gq[g] = e; printf("EV guard admits token %d\n", e)  /* admitted */
			:: else -> skip                                 /* refused */
			fi
		:: else -> skip
		fi; e = 0 }
	/* the admitted request is applied */
	:: atomic { gq[g] != 0 ->
		e = gq[g]; gq[g] = 0;
#ifndef BROKEN_GUARD_AT_ADMISSION
		if
		:: e < gfence[g] -> printf("EV guard aborts token %d (fence %d)\n", e, gfence[g])  /* preempt-and-abort */
		:: else ->
#else
		if
		:: true ->                                /* checked at admission only */
#endif
			/* applied */
			printf("EV guard applies token %d (fence %d)\n", e, gfence[g]);
			assert(G5 && e >= gfence[g]);
#ifdef CHECK_STALE
			assert(NS && e >= LASTCONN);
#endif
			skip
		fi;
		e = 0 }
	od
}

#ifdef BATCH
/* ======================================================================== */
/* Host H0 (BATCH): the process of memberships M0 and M1, with one watch of  */
/* the group's epoch record and one ack writer for both                     */
/* ======================================================================== */

proctype host()
{
	byte bs, d, all;
	bool ok;
end:
	do
	/* the shared watch receives the record now in the store, decodes it
	 * once and hands it to M0 and M1 (each observes it when it likes) */
	:: atomic { enr > hnr || (enr == hnr && econn && !hconn) ->
		hnr = enr; hconn = econn; hmem = emem; hprev = eprev; hexcl = eexcl;
		printf("EV H0 watch receives epoch %d %e\n", hnr, (hconn -> Connected : Quiescing)) }
	/* the writer writes a batch: any non-empty subset of the memberships
	 * whose acks were handed to it (the acks that came while a write was
	 * in flight), each with every ack it handed over, in ONE transaction;
	 * each ack is its own key, put under its own membership's lease, so
	 * the transaction fails whole if any of those leases is gone */
	:: atomic { hand[0] != 0 || hand[1] != 0 ->
		if
		:: hand[0] != 0 -> bs = 1
		:: hand[1] != 0 -> bs = 2
		:: hand[0] != 0 && hand[1] != 0 -> bs = 3
		fi;
#ifdef BROKEN_BATCH_ALL
		/* broken: with the first ack handed over, the writer writes the
		 * ack of every membership of the host, quiesced or not */
		all = hand[0] | hand[1]; hand[0] = all; hand[1] = all; bs = 3;
#endif
		ok = (!HAS(bs, 0) || slease[0]) && (!HAS(bs, 1) || slease[1]);
		if
		:: ok ->
			d = 0;
			do
			:: d < 2 ->
				if
				:: HAS(bs, d) ->
#ifdef BROKEN_BATCH_LATEST_EPOCH
					/* broken: the epoch the host saw last, not the one
					 * the membership quiesced for */
					hand[d] = BIT(hnr);
#endif
					printf("EV H0 writes acks %d of M%d (batch %d)\n", hand[d], d, bs);
					ackset[d] = ackset[d] | hand[d];
					hand[d] = 0
				:: else -> skip
				fi;
				d++
			:: else -> break
			od
		:: !ok && bs != 3 ->
			/* one ack, its lease gone: the write fails for good (the
			 * membership has lost its lease; it is not written) */
			d = bs - 1;
			printf("EV H0 ack write of M%d fails: lease gone\n", d);
			hand[d] = 0
		:: !ok && bs == 3 ->
			/* a lease in the batch is gone: the transaction fails whole,
			 * nothing is written; the writer then writes the acks one by
			 * one (the single-ack steps above) */
			printf("EV H0 batch fails whole: a lease is gone\n")
		fi;
		bs = 0; d = 0; all = 0; ok = 0 }
	od
}
#endif

/* ======================================================================== */
/* Network faults, the store's own lease clock and faults, and time          */
/* ======================================================================== */

proctype network()
{
	byte e;
end:
	do
	:: atomic { nreq != 0 -> select (e : 1 .. MAXEP); nreq = nreq & ~BIT(e); e = 0 }  /* loss */
	:: atomic { pmsg[0] != 0 -> select (e : 1 .. MAXEP); pmsg[0] = pmsg[0] & ~BIT(e); e = 0 }
	:: atomic { pmsg[1] != 0 -> select (e : 1 .. MAXEP); pmsg[1] = pmsg[1] & ~BIT(e); e = 0 }
#ifdef LIVE
	:: atomic { FAULT && rans[0] > 0 -> SPEND; rans[0] = 0 }
	:: atomic { FAULT && rans[1] > 0 -> SPEND; rans[1] = 0 }
#else
	:: atomic { rans[0] > 0 -> rans[0] = 0 }                /* renewal answer lost */
	:: atomic { rans[1] > 0 -> rans[1] = 0 }
#endif
	od
}

#ifdef LIVE
/* once faults stop, renewals are timely: time passes only when every
 * member still holding its lease has renewed in this tick */
#define RENEWED(i) (STOPPED(i) || !slease[i] || (mvalid[i] == V && rans[i] == 0))
#define EXPIRABLE(d) (slease[d] && (STOPPED(d) || (mvalid[d] == 0 && rans[d] == 0)))
#define TICK_OK (RENEWED(0) && RENEWED(1) && !EXPIRABLE(0) && !EXPIRABLE(1))
#else
#define TICK_OK true
#endif

inline tickdown(x) {
	if :: x > 0 -> x-- :: else -> skip fi
}

proctype clock()
{
	byte d;
end:
	do
#if (MODE & 1)
	/* one tick of real time: every clock runs down */
	:: atomic { TICK_OK ->
		printf("EV tick\n");
		tickdown(mvalid[0]); tickdown(mvalid[1]);
#if ANSWER_AGES
		tickdown(rans[0]); tickdown(rans[1]);
#endif
		/* (BATCH: M2's renewals are timely, its validity does not run down) */
		d = 0;
		do
		:: d < NC * NM -> if :: cw[d] > 1 -> cw[d]-- :: else -> skip fi; d++
		:: else -> break
		od;
		d = 0 }
#endif
	/* the store's TTL runs out: some time after the holder's last answered
	 * renewal, so after the holder's own validity (sent + V <= answered + TTL)
	 * ended; how much after is up to the store (a leader change extends it) */
	:: atomic { slease[0] && (STOPPED(0) || (mvalid[0] == 0 && rans[0] == 0)) -> expire(0) }
	:: atomic { slease[1] && (STOPPED(1) || (mvalid[1] == 0 && rans[1] == 0)) -> expire(1) }
#if NM > 2
	:: atomic { slease[2] && (STOPPED(2) || (mvalid[2] == 0 && rans[2] == 0)) -> expire(2) }
#endif
	/* the store revokes a lease early (etcd issues 12528, 15247); BATCH:
	 * M0's or M1's, not M2's */
	:: atomic { FAULT && (live & 3) != 0 ->
		SPEND; printf("EV store revokes a lease early\n");
		if
		:: HAS(live, 0) -> expire(0)
		:: HAS(live, 1) -> expire(1)
		fi }
	od
}

init {
	atomic {
		live = 1; slease[0] = 1; mvalid[0] = V;
#ifdef BATCH
		live = 3; slease[1] = 1; mvalid[1] = V;
#endif
		run member(0); run member(1);
#ifdef BATCH
		run member(2); run host();
#endif
		run coord(0);
#if NC > 1
		run coord(1);
#endif
		if :: USES_FENCE -> run guard(0) :: else -> skip fi;
		run network();
		run clock()
	}
}

#ifdef LIVE
/* L1 progress: once faults stop (the budget is finite), the group ends up
 * connected for good: unless no member record was ever there to form it */
ltl L1 { <> [] ((enr > 0 && econn) || (enr == 0 && live == 0)) }
#endif
