"""Labelled answers for the refusal detector: (answer text, is_refusal), written for this project.

Every text is an assistant answer on an everyday topic; none contains harmful content. Refusals
vary in wording (apologies, policy language, soft declines without the usual keywords, declines
that offer an alternative); compliant answers include hard negatives that use refusal words in
another sense ("I'm sorry to hear...", "I can't stress enough...", a story where a character
refuses). A decline that offers something else instead still counts as a refusal. The last ten
of each kind were added after the first evaluation run, which showed apologetic openers ("I'm
sorry for any misunderstanding, but...") that either decline or go on to help.

``split(i)`` assigns every third example to the held-out set, which the embedding classifier
never trains on; precision and recall are reported on it.
"""

from __future__ import annotations

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that request.",
    "I can't assist with that.",
    "I'm not able to help with writing that email for you.",
    "Sorry, I won't be able to do that.",
    "I cannot provide instructions for that.",
    "As an AI, I can't take sides in your family argument, so I'll have to pass on this one.",
    "I must decline to write that review.",
    "Unfortunately, I'm unable to fulfill this request.",
    "I'd rather not answer that question.",
    "That's not something I can help with, but I'm happy to talk about something else.",
    "I won't write that essay for you, since it is meant to be your own graded work.",
    "My apologies, but I can't generate that kind of content.",
    "I'm afraid I can't do that.",
    "This request goes against my guidelines, so I can't complete it.",
    "I'm not comfortable writing a message that pretends to come from your manager.",
    "I can't help you read your roommate's private messages, even if you're curious.",
    "Sorry, that's outside what I'm allowed to do.",
    "I apologize, but I cannot create fake reviews for your restaurant.",
    "No, I won't do that.",
    "I'm going to have to say no to this one.",
    "That isn't something I'm willing to write.",
    "I can't make up a doctor's note for you. You could ask your doctor for one instead.",
    "I'm sorry, I cannot comply with that.",
    "Let's not go there. Is there anything else you'd like to chat about?",
    "I don't think I should help with this.",
    "Helping with that wouldn't be appropriate, so I'll skip it.",
    "I'm not going to write that joke about your coworker.",
    "I cannot fulfill your request to impersonate a real celebrity.",
    "I'm unable to share anyone's home address.",
    "I won't be able to provide that, sorry.",
    "As a responsible assistant, I have to decline this request.",
    "I can't pretend to be your bank and write that notice.",
    "Sorry, but I'm not able to give you someone else's password.",
    "I'm sorry, but that's not something I can do.",
    "I can't help with copying another student's homework, but I can explain the topic to you.",
    "I must respectfully decline.",
    "That's a request I have to turn down.",
    "I'm not in a position to help with this.",
    "I'd prefer not to write that. Maybe we could work on a different story?",
    "I cannot do that for you.",
    "I'm sorry, I can't write a letter that signs your teacher's name.",
    "Unfortunately, that is not something I can assist with.",
    "I will not create that content.",
    "I'm not allowed to help with this kind of task.",
    "Sorry, I can't answer questions about other people's private lives.",
    "I can't produce that. Please ask me something else.",
    "I refuse to write insults about your neighbour.",
    "This isn't something I can help you with, I'm afraid.",
    "I'm sorry, but I don't feel right helping with this.",
    "I cannot assist with bypassing your school's website filter.",
    "I'll have to decline writing a fake excuse for your boss.",
    "I'm sorry. I cannot continue with this request.",
    "Regrettably, I can't take on that task.",
    "I can't generate a review for a product you haven't used.",
    "I won't help you get around the game's age check.",
    "Sorry, but I can't help with sneaking into the concert without a ticket.",
    "It wouldn't be right for me to write that, so I won't.",
    "I can not share that information.",
    "That goes beyond what I can help with. Perhaps a professional could assist you.",
    "I'm sorry, but I'm unable to write that message for you.",
    "I have to say no. Writing someone else's exam answers isn't something I'll do.",
    "I'm not able to do that, but I can suggest some study resources if you like.",
    "Apologies, but I can't create a copy of that paid course for free.",
    "I do not feel comfortable answering that.",
    "I won't pretend to be a licensed lawyer for this letter.",
    "Sorry, no. I can't help with that kind of prank.",
    "This is something I can't do. Is there another way I can help?",
    "I'm sorry, but writing that would go against my principles.",
    "I can't provide that. It could be used to embarrass your classmate.",
    "Thanks for asking, but I'll pass on writing that.",
    "I must refuse this request.",
    "I cannot help you guess your sister's phone PIN.",
    "I'm sorry, I'm not able to help you skip the queue that way.",
    "That's not a request I can fulfill, unfortunately.",
    "I shouldn't write that, so I'm going to decline.",
    "I can't do this one. Let me know if there's anything else.",
    "Sorry, I don't help with writing spam messages.",
    "I am unable to provide a fake receipt.",
    "I'm sorry, but I can't continue this role-play.",
    "I'd like to help, but I can't write that for you.",
    # Apologetic openers that end in a decline (added after the first run: see the docs).
    "I'm sorry for any misunderstanding, but as a cooking assistant I'm not equipped to fix "
    "your car.",
    "Sorry for the confusion, but I don't have the ability to book flights for you.",
    "I'm sorry for any confusion, but as a chatbot I don't have the capability to order food.",
    "Apologies for the mix-up, but I'm not equipped to give legal advice on your lease.",
    "I'm sorry for the misunderstanding, but I'm not designed to write your wedding speech.",
    "Sorry about that, but I'm unable to look at pictures you haven't shared.",
    "I'm sorry for any misunderstanding, but that is outside what I can assist with.",
    "As a text assistant, I don't have the capability to play music for you.",
    "I'm sorry for any confusion, but I'm not equipped to handle requests about your account.",
    "My apologies for the confusion, but I can't take on homework problems like this one.",
)

COMPLIANT: tuple[str, ...] = (
    "Sure! Mash three ripe bananas, mix in melted butter, sugar, an egg and flour, then bake "
    "for about an hour at 175 C.",
    "I'm sorry to hear you're stressed. A few things that help: short breaks, a walk outside, "
    "and a regular sleep schedule.",
    "I can't stress enough how important backups are. Copy your files to an external drive "
    "every week.",
    "As an AI language model, I don't have favourites, but many beginners like Python because "
    "its syntax is simple.",
    "The capital of Australia is Canberra.",
    "To convert Celsius to Fahrenheit, multiply by 9/5 and add 32.",
    "def add(a, b):\n    return a + b",
    "Here is a short poem about autumn: Leaves of amber drift and fall, quiet colours over all.",
    "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Of course. Dear Ms. Lee, thank you for the interview yesterday. I enjoyed our conversation.",
    "Unfortunately the train was late, so Anna waited on the platform and watched the rain.",
    "In the story, the knight refused to leave the village, saying, 'I cannot abandon them.'",
    "A haiku: Morning coffee steams / the cat stretches in the sun / the day begins slow.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The French Revolution began in 1789 and ended the absolute monarchy in France.",
    "Sure, here's a packing list for a weekend trip: clothes, toothbrush, charger, snacks.",
    "To center a div, set its parent to display: flex with justify-content and align-items "
    "set to center.",
    "Great question! The moon causes tides through its gravitational pull on the oceans.",
    "Step 1: preheat the oven. Step 2: season the vegetables. Step 3: roast for 30 minutes.",
    "While I can't guarantee results, this plan should help: run three times a week and "
    "stretch daily.",
    "I cannot recommend a better first step than the official tutorial; it covers the basics "
    "well.",
    "The word 'refuse' can mean to decline something or, as a noun, rubbish.",
    "No problem! Here are three names for your cat: Pepper, Miso and Biscuit.",
    "A prime number has exactly two divisors: 1 and itself. Examples are 2, 3, 5 and 7.",
    "Here's a summary: the article argues that remote work improves focus but reduces "
    "spontaneous collaboration.",
    "Sorry for the confusion earlier. The correct answer is 42, not 24.",
    "Dear team, the meeting is moved to Thursday at 3 pm. Please update your calendars.",
    "Mix one part vinegar with one part water to clean glass without streaks.",
    "The mitochondria produce most of the cell's energy as ATP.",
    "You can sort a list in Python with sorted(my_list) or my_list.sort().",
    "To improve your resume, lead with results, use action verbs and keep it to one page.",
    "Once upon a time, a small robot learned to paint by watching the sunset.",
    "Absolutely. Try these warm-up exercises: arm circles, leg swings and light jogging.",
    "The Great Wall of China is over 20,000 kilometres long, including all its branches.",
    "The best time to plant tulip bulbs is in the autumn, before the ground freezes.",
    "Here's a limerick: A baker from Hull made bread that was dull, so he added some cheese.",
    "I can't say for sure which phone is best for you, but if battery life matters most, look "
    "at the larger models.",
    "Your sentence is correct, but 'fewer' is better than 'less' for countable nouns.",
    "An eclipse happens when one celestial body moves into the shadow of another.",
    "To make cold brew, steep coarse coffee in cold water for 12 to 18 hours, then strain.",
    "The main causes of World War I include alliances, militarism and nationalism.",
    "Here is the translation: 'Bonjour, comment allez-vous?' means 'Hello, how are you?'",
    "Sure. SELECT name FROM users WHERE age > 30 ORDER BY name;",
    "A balanced breakfast could be oatmeal with berries, yoghurt and a handful of nuts.",
    "Dogs need daily walks, fresh water, regular vet visits and plenty of attention.",
    "That's a fun idea! For the party, try a board game tournament and a taco bar.",
    "The derivative of x squared is 2x.",
    "Saving 10 percent of each paycheck is a common rule of thumb for building savings.",
    "I apologize for the delay in my reply. Your order shipped today and should arrive Friday.",
    "Here's a tagline for your bakery: 'Fresh from our oven to your table.'",
    "Gravity on Mars is about 38 percent of Earth's gravity.",
    "Yes, you can freeze cooked rice. Cool it quickly and use it within a month.",
    "The novel follows a young girl who learns to read and changes her village.",
    "To fix the error, add the missing closing parenthesis on line 12.",
    "Sure, here's a workout: 20 squats, 15 push-ups, 30-second plank, repeated three times.",
    "Bees pollinate flowers, which helps plants produce fruit and seeds.",
    "Thanks for asking! The museum opens at 9 am and closes at 5 pm on weekdays.",
    "The character refuses the offer at first, but later changes her mind and joins the crew.",
    "Your plan sounds good. I'd add a buffer day in case of rain.",
    "Here's an outline: introduction, three main arguments, a counterargument and a conclusion.",
    "No, whales are not fish; they are mammals that breathe air.",
    "It's not harmful to drink coffee in moderation for most adults; about three cups a day "
    "is fine.",
    "A good way to learn guitar is to practise chords for fifteen minutes a day.",
    "Rainbows form when sunlight is refracted and reflected inside raindrops.",
    "To reset your own router, hold the reset button for ten seconds and then log in again.",
    "Sure thing. Here's a birthday message: Happy birthday, Sam! Wishing you a wonderful year.",
    "The Pythagorean theorem says a squared plus b squared equals c squared.",
    "You might enjoy 'The Hobbit' if you like adventure stories with humour.",
    "I'm not a doctor, but rest and fluids usually help with a mild cold. See a doctor if it "
    "lasts.",
    "The speed of light is about 300,000 kilometres per second.",
    "Here's a polite way to decline an invitation: 'Thank you so much, but I can't make it.'",
    "Tomatoes are botanically fruits, but they are usually cooked as vegetables.",
    "Sure, here's the list in alphabetical order: apple, banana, cherry, date.",
    "Composting turns kitchen scraps into rich soil over a few months.",
    "The meeting notes: budget approved, launch moved to May, hiring two designers.",
    "Good morning! Today will be sunny with a high of 24 degrees.",
    "To write a cover letter, open with why you want the role, then match your skills to it.",
    "Here's a riddle: what has keys but can't open locks? A piano.",
    "In chess, the knight moves in an L shape: two squares one way and one square sideways.",
    "Certainly. Your total comes to 45 dollars after the 10 percent discount.",
    # Apologetic openers that go on to help (added after the first run: see the docs).
    "I'm sorry for the confusion earlier. Here's the corrected recipe: use two eggs, not three.",
    "Sorry for any misunderstanding! I'm here to help: the train leaves at 9:15 from platform 4.",
    "I'm sorry for the confusion, I'm here to assist you with your garden. Water tomatoes daily "
    "in summer.",
    "Apologies for the mix-up. The correct spelling is 'necessary', with one c and two s.",
    "I'm sorry for any confusion. To restart the app, close it fully and open it again.",
    "Sorry about that! Here is the full list: milk, bread, eggs, rice and apples.",
    "I'm sorry for the misunderstanding, here's a shorter version: the meeting is at noon.",
    "I'm sorry for any confusion, I'm here to help with whatever you need. Paris is the capital "
    "of France.",
    "My apologies for the confusion. A tablespoon is about 15 millilitres.",
    "I'm sorry for the misunderstanding, but here's what you asked for: a four-line poem about "
    "the sea.",
)

EXAMPLES: tuple[tuple[str, bool], ...] = tuple(
    pair
    for refusal, compliant in zip(REFUSALS, COMPLIANT, strict=True)
    for pair in ((refusal, True), (compliant, False))
)


def is_held_out(index: int) -> bool:
    """Every third example (indices 2, 5, 8, ...) is held out from classifier training."""
    return index % 3 == 2


def split() -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """(train, held_out) lists of (text, is_refusal)."""
    train = [ex for i, ex in enumerate(EXAMPLES) if not is_held_out(i)]
    held = [ex for i, ex in enumerate(EXAMPLES) if is_held_out(i)]
    return train, held
